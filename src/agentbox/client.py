"""A Python client for the agentbox HTTP API (used by the CLI and the tests)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx


class APIError(Exception):
    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, url, **kwargs)
        _raise_for_status(response)
        return response

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health").json())

    def create(self, **options: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/workspaces", json=options).json())

    def list(self, status: str | None = None, labels: dict[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        params: list[tuple[str, str]] = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        if status:
            params.append(("status", status))
        return list(self._call("GET", "/workspaces", params=params).json()["workspaces"])

    def get(self, workspace_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/workspaces/{workspace_id}").json())

    def delete(self, workspace_id: str) -> None:
        self._call("DELETE", f"/workspaces/{workspace_id}")

    def stop(self, workspace_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/workspaces/{workspace_id}/stop").json())

    def start(self, workspace_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/workspaces/{workspace_id}/start").json())

    def extend(self, workspace_id: str, ttl_days: float | None = None) -> dict[str, Any]:
        body = {"ttl_days": ttl_days} if ttl_days is not None else None
        return dict(self._call("POST", f"/workspaces/{workspace_id}/extend", json=body).json())

    def git_push(self, workspace_id: str) -> dict[str, Any]:
        """Push the current branch of the workspace's repository (`repo` at create)."""
        return dict(self._call("POST", f"/workspaces/{workspace_id}/git/push").json())

    def exec(self, workspace_id: str, command: str | builtins.list[str], **options: Any) -> dict[str, Any]:
        return dict(self._call("POST", f"/workspaces/{workspace_id}/exec", json={"command": command, **options}).json())

    def exec_stream(
        self, workspace_id: str, command: str | builtins.list[str], **options: Any
    ) -> Iterator[dict[str, Any]]:
        # No read timeout: a command may stay silent for as long as its own timeout lets it run.
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        with self._http.stream(
            "POST", f"/workspaces/{workspace_id}/exec/stream", json={"command": command, **options}, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_status(response)
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def read_file(self, workspace_id: str, path: str) -> bytes:
        return self._call("GET", f"/workspaces/{workspace_id}/files", params={"path": path}).content

    def list_dir(self, workspace_id: str, path: str) -> builtins.list[dict[str, Any]]:
        kind, content = self.read_path(workspace_id, path)
        if kind != "dir":
            raise APIError(409, f"{path} is a file, not a directory")
        assert isinstance(content, list)
        return content

    def read_path(self, workspace_id: str, path: str) -> tuple[str, bytes | builtins.list[dict[str, Any]]]:
        """("file", its bytes) or ("dir", its entries), in one request."""
        response = self._call("GET", f"/workspaces/{workspace_id}/files", params={"path": path})
        if response.headers.get("content-type", "").startswith("application/json"):
            entries: builtins.list[dict[str, Any]] = response.json()["entries"]
            return "dir", entries
        return "file", response.content

    def write_file(self, workspace_id: str, path: str, data: bytes | Iterable[bytes], mode: str = "644") -> int:
        response = self._call(
            "PUT", f"/workspaces/{workspace_id}/files", params={"path": path, "mode": mode}, content=data
        )
        return int(response.json()["size"])

    def read_archive(self, workspace_id: str, path: str) -> bytes:
        return self._call("GET", f"/workspaces/{workspace_id}/archive", params={"path": path}).content

    def write_archive(self, workspace_id: str, path: str, tar_data: bytes | Iterable[bytes]) -> None:
        self._call("PUT", f"/workspaces/{workspace_id}/archive", params={"path": path}, content=tar_data)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    raise APIError(response.status_code, detail)
