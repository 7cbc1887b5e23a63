"""A Python client for the agentbox HTTP API (used by the CLI and the tests); it returns the API's own models.

Every method raises `APIError` (with the answer's `status_code` and `detail`) when the server
answers with an error, or with something that is not what the API documents, and httpx's
`TransportError` when it cannot be reached. Each method's docstring names the statuses it may
meet besides 401 (no key, or one that does not work) and 429 (too many refused keys from this
address), which any may.

Importing it loads neither the server (SQLAlchemy, FastAPI) nor its settings: the bodies of
agentbox.wire (one module per resource) are the server's and the client's alike.
"""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, Required, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from agentbox.wire.audit import AuditPage
from agentbox.wire.commands import ErrorEvent, ExecOut, ExecStreamEvent, ExitEvent, OutputEvent
from agentbox.wire.common import ErrorOut, FieldError
from agentbox.wire.files import DirEntryOut, DirListing, WatchEventOut, WriteResult
from agentbox.wire.github import PushOut
from agentbox.wire.keys import KeyList, KeyOut, NewKeyOut
from agentbox.wire.ports import ListeningPorts, PreviewURL
from agentbox.wire.processes import (
    ProcessList,
    ProcessOut,
    ProcessStreamEvent,
    SessionList,
    SessionOut,
    SessionRunOut,
    process_event,
)
from agentbox.wire.snapshots import ForkOut, SnapshotList, SnapshotOut
from agentbox.wire.system import Capacity, Health, ProviderList, ProviderStatus
from agentbox.wire.templates import BuildLogLine, TemplateList, TemplateOut
from agentbox.wire.tools import EditToolOut, GlobToolOut, GrepToolOut, ReadToolOut
from agentbox.wire.vault import SecretList, SecretOut
from agentbox.wire.volumes import VolumeList, VolumeOut
from agentbox.wire.workspaces import UsageOut, WorkspaceList, WorkspaceOut

Model = TypeVar("Model", bound=BaseModel)
Event = TypeVar("Event")
#: Query parameters: by name, or httpx's own where a name repeats (`label=a=1&label=b=2`).
Query = Mapping[str, str | int | float | bool] | httpx.QueryParams
#: A request body sent as is: bytes, or pieces of it as they come (a file being read).
Body = bytes | Iterable[bytes]


class RepoOptions(TypedDict, total=False):
    """`repo` of `Client.create`: a GitHub repository to check out into /workspace/<name> (wire.github.RepoSpec)."""

    repository: Required[str]  # owner/name
    ref: str  # a branch, tag or commit
    installation_id: int
    app: str  # the registered App's id (gh-...); default: your only one


class AllowOptions(TypedDict, total=False):
    """An egress policy (README, "Egress by name"): entries are names, `*.` wildcards, IPv4 CIDRs, each with
    ports ("api.example.com:443"); header rules set headers naming secrets (`${e2b.secrets.NAME}`); GitHub
    grants (`{"app": "gh-...", "repositories": ["owner/name"]}`) let git reach those repositories of a registered
    App, the proxy putting in its token."""

    allow: Sequence[str | dict[str, object]]
    deny: Sequence[str | dict[str, object]]
    default: Literal["allow", "deny"]
    precedence: Literal["allow", "deny"]
    headers: builtins.list[dict[str, object]]
    github: builtins.list[dict[str, object]]


class VolumeOptions(TypedDict, total=False):
    """A volume of yours to mount into a new workspace (wire.volumes.VolumeMountIn)."""

    name: Required[str]  # or its id, vol-...
    path: Required[str]  # absolute, e.g. /mnt/data
    read_only: bool


class WorkspaceOptions(TypedDict, total=False):
    """The fields of a workspace to create (wire.workspaces.CreateWorkspace); each left out: the server's default."""

    provider: str  # gvisor, docker or e2b
    image: str
    cpu: float
    memory: int | str  # bytes, or a size such as "512M"
    disk: int | str
    ephemeral: bool
    ttl_days: float
    env: dict[str, str]
    labels: dict[str, str]
    network: Literal["egress", "none"] | AllowOptions
    repo: RepoOptions
    idle_timeout: float  # seconds unused before it is suspended (woken by its next use); 0: never
    volumes: builtins.list[VolumeOptions]
    snapshot: str  # one of your snapshots, by id or name: its files (and memory where kept), its spec as defaults
    template: str  # one of your templates, by id or name[:tag]: its image, started and ready before it is answered


class ExecOptions(TypedDict, total=False):
    """How to run a command (wire.commands.ExecIn)."""

    timeout: float  # seconds; default: the server's WORKSPACE_EXEC_TIMEOUT
    cwd: str  # absolute; default /workspace
    env: dict[str, str]  # added to the workspace's own


class TerminalSize(TypedDict):
    cols: int
    rows: int


class ProcessOptions(TypedDict, total=False):
    """How to start a background process (wire.processes.ProcessIn)."""

    cwd: str
    env: dict[str, str]
    stdin: bool  # keep its stdin open for `write_stdin`
    pty: TerminalSize  # run it on a terminal of this size
    tag: str | None  # your own name for it
    timeout: float  # seconds after which it is killed, whether or not anyone watches


class GrepOptions(TypedDict, total=False):
    """A search's options besides its pattern and path (wire.tools.GrepToolIn)."""

    include: str  # only files whose names match this glob
    context: int  # lines around each match
    ignore_case: bool
    limit: int  # matching lines at most


class KeyQuota(TypedDict, total=False):
    """Limits on the key owner's active workspaces while the key asks (wire.keys.CreateKey)."""

    max_workspaces: int
    max_cpus: float
    max_memory: int | str  # bytes, or a size such as "16G"


class APIError(Exception):
    """The server answered with an error: its HTTP `status_code` and its `detail`, a sentence saying what
    to fix, or for a request that does not validate (422), each bad field."""

    def __init__(self, status_code: int, detail: str | builtins.list[FieldError]) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{status_code}: {self.message}")

    @property
    def message(self) -> str:
        """`detail` as one line of text: the sentence, or each bad field as `where: what`."""
        if isinstance(self.detail, str):
            return self.detail
        return "; ".join(f"{'.'.join(str(part) for part in error.loc)}: {error.msg}" for error in self.detail)


class Client:
    """The API of the server at `base_url`, as the owner of `api_key`.

    `transport` replaces the network: `httpx.MockTransport`, or one that hands each request to
    the app in-process, as tests/unit/test_api.py does.
    """

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

    def _call(
        self, method: str, url: str, *, params: Query | None = None, json: object = None, content: Body | None = None
    ) -> httpx.Response:
        response = self._http.request(method, url, params=params, json=json, content=content)
        _raise_for_status(response)
        return response

    def health(self) -> Health:
        """The server's health: runtime, gVisor platform, providers, version; with a key, the replicas and the
        leader too. Needs no key; raises 401 for a key that does not work, and 429."""
        return _parse(Health, self._call("GET", "/health"))

    def providers(self) -> builtins.list[ProviderStatus]:
        """The server's providers: available or why not, runtime and platform, capabilities, active count."""
        return _parse(ProviderList, self._call("GET", "/providers")).providers

    def capacity(self) -> Capacity:
        """The cap on active workspaces, how many are active, and the warm pool's state.

        Raises APIError: 404 when workspaces are disabled on the server.
        """
        return _parse(Capacity, self._call("GET", "/capacity"))

    def create_key(self, owner: str, name: str, admin: bool = False, **quota: Unpack[KeyQuota]) -> NewKeyOut:
        """Make an API key for `owner` (needs an admin's key), with the quotas given. Its `secret` is in the
        answer, this once.

        Raises APIError: 403 when this client's key is not an admin's, 422 for bad fields.
        """
        body = {"owner": owner, "name": name, "admin": admin, **quota}
        return _parse(NewKeyOut, self._call("POST", "/keys", json=body))

    def list_keys(self, owner: str | None = None, include_revoked: bool = False) -> builtins.list[KeyOut]:
        """API keys (no secrets): every owner's (or `owner`'s) for an admin, else this client's owner's.

        Raises APIError: 422 for a malformed owner.
        """
        params: dict[str, str | bool] = {"include_revoked": include_revoked} | ({"owner": owner} if owner else {})
        return _parse(KeyList, self._call("GET", "/keys", params=params)).keys

    def my_key(self) -> KeyOut:
        """The record of the key this client uses. Raises only APIError 401 (or 429)."""
        return _parse(KeyOut, self._call("GET", "/keys/me"))

    def revoke_key(self, key_id: str) -> KeyOut:
        """Revoke a key (an admin: any; others: their own): it stops working everywhere within a second.

        Raises APIError: 404 when there is no such key (of yours), 400 for the last admin key.
        """
        return _parse(KeyOut, self._call("DELETE", f"/keys/{key_id}"))

    def put_secret(self, name: str, value: str) -> SecretOut:
        """Store `value` as your secret `name` (sealed), replacing it if it exists; its name and times.

        Raises APIError: 404 when secrets are not configured on the server, 409 when you hold the most
        secrets allowed already (100), 422 for a malformed name or an empty or too large value.
        """
        return _parse(SecretOut, self._call("PUT", f"/secrets/{quote(name, safe='')}", json={"value": value}))

    def secrets(self) -> builtins.list[SecretOut]:
        """Your secrets by name, without their values. Raises APIError: 404 when secrets are not configured."""
        return _parse(SecretList, self._call("GET", "/secrets")).secrets

    def delete_secret(self, name: str) -> None:
        """Delete your secret `name`. Raises APIError: 404 when you have no such secret, 422 for a bad name."""
        self._call("DELETE", f"/secrets/{quote(name, safe='')}")

    def create_volume(self, name: str, size: int | str) -> VolumeOut:
        """Make a named volume of `size` (bytes, or a size such as "1G").

        Raises APIError: 400 when no provider on the server keeps volumes, 409 when you have a volume of that name
        or as many as the server allows, 422 for a bad name or size.
        """
        return _parse(VolumeOut, self._call("POST", "/volumes", json={"name": name, "size": size}))

    def volumes(self) -> builtins.list[VolumeOut]:
        """Your volumes by name, each with the workspaces that mount it."""
        return _parse(VolumeList, self._call("GET", "/volumes")).volumes

    def volume(self, volume: str) -> VolumeOut:
        """One of your volumes, by name or id. Raises APIError: 404 when you have no such volume."""
        return _parse(VolumeOut, self._call("GET", f"/volumes/{quote(volume, safe='')}"))

    def build_template(
        self,
        name: str,
        dockerfile: str,
        *,
        tag: str = "latest",
        context: bytes | None = None,
        start_cmd: str | None = None,
        ready_cmd: str | None = None,
        ready_timeout: float = 60.0,
        pool_size: int = 0,
    ) -> TemplateOut:
        """Start building a template from `dockerfile` (and `context`, a tar archive, gzip'd or not); answered at
        once with `status` building: follow it with `template_log`. Raises APIError: 400 for a FROM image not on
        the server, 409 for a name and tag you have, 413 past the size limits, 422 for a Dockerfile that does not
        parse, 429 while the server runs as many builds as it allows."""
        body = {
            "name": name,
            "tag": tag,
            "dockerfile": dockerfile,
            "context": base64.b64encode(context).decode() if context is not None else None,
            "start_cmd": start_cmd,
            "ready_cmd": ready_cmd,
            "ready_timeout": ready_timeout,
            "pool_size": pool_size,
        }
        return _parse(TemplateOut, self._call("POST", "/templates", json=body))

    def templates(self) -> builtins.list[TemplateOut]:
        """Your templates, by name."""
        return _parse(TemplateList, self._call("GET", "/templates")).templates

    def template(self, template: str) -> TemplateOut:
        """One of your templates, by id or name[:tag]. Raises APIError: 404 when you have no such template."""
        return _parse(TemplateOut, self._call("GET", f"/templates/{quote(template, safe='')}"))

    def template_log(self, template: str, offset: int = 0, follow: bool = True) -> Iterator[BuildLogLine]:
        """The template's build log from `offset`, as it comes (with `follow`, until the build ends), then a
        line with its `status` (and `error`). Raises APIError (before the first line): 404."""
        params: Query = {"offset": offset, "follow": follow}
        url = f"/templates/{quote(template, safe='')}/build-log"
        return self._stream("GET", url, _build_log_line, params=params)

    def delete_template(self, template: str) -> None:
        """Delete your template (by id or name[:tag]) and its image. Raises APIError: 404, 409 while it builds or
        while workspaces made from it are left (the detail names each)."""
        self._call("DELETE", f"/templates/{quote(template, safe='')}")

    def delete_volume(self, volume: str) -> None:
        """Delete your volume (by name or id) and what it holds. Raises APIError: 404 when you have no such
        volume, 409 while a workspace mounts it (the detail names each)."""
        self._call("DELETE", f"/volumes/{quote(volume, safe='')}")

    def snapshot(self, workspace_id: str, name: str | None = None) -> SnapshotOut:
        """Snapshot one of your workspaces (running or stopped), which goes on as it was: its files, and its memory
        and processes where the server can (`memory_kept`).

        Raises APIError: 400 when its provider cannot snapshot, 404, 409 when it is neither running nor stopped or
        you have a snapshot of that name, 422 for a bad name, 429 past the server's WORKSPACE_MAX_SNAPSHOTS.
        """
        body = {"name": name} if name is not None else {}
        return _parse(SnapshotOut, self._call("POST", f"/workspaces/{workspace_id}/snapshots", json=body))

    def snapshots(
        self, workspace_id: str | None = None, name: str | None = None, limit: int = 100, before: str | None = None
    ) -> SnapshotList:
        """A page of your snapshots, newest first (its `next_before` pages on), of one workspace or name if given."""
        params = {"workspace_id": workspace_id, "name": name, "limit": limit, "before": before}
        found = self._call("GET", "/snapshots", params={k: v for k, v in params.items() if v is not None})
        return _parse(SnapshotList, found)

    def get_snapshot(self, snapshot: str) -> SnapshotOut:
        """One of your snapshots, by id or name. Raises APIError: 404 when you have no such snapshot."""
        return _parse(SnapshotOut, self._call("GET", f"/snapshots/{quote(snapshot, safe='')}"))

    def delete_snapshot(self, snapshot: str) -> None:
        """Delete one of your snapshots (by id or name). Raises APIError: 404 when you have no such snapshot."""
        self._call("DELETE", f"/snapshots/{quote(snapshot, safe='')}")

    def fork(self, workspace_id: str, count: int = 1, keep_snapshot: bool = False) -> ForkOut:
        """Snapshot one of your workspaces and make `count` (1 to 100) workspaces from it; each is made or fails on
        its own (`workspaces[i].error`). Raises APIError as `snapshot` does, 422 for a count out of range."""
        body = {"count": count, "keep_snapshot": keep_snapshot}
        return _parse(ForkOut, self._call("POST", f"/workspaces/{workspace_id}/fork", json=body))

    def create(self, **options: Unpack[WorkspaceOptions]) -> WorkspaceOut:
        """Create a workspace with the fields of `CreateWorkspace` as keywords; return it, running.

        Raises APIError: 400 when the provider cannot do what is asked, 404 when workspaces are
        disabled, 422 for bad options, 429 when the server's limit of active workspaces, or a quota
        of this client's key, is reached, 502/503 when the provider fails or cannot be reached.
        """
        return _parse(WorkspaceOut, self._call("POST", "/workspaces", json=options))

    def list(self, status: str | None = None, labels: dict[str, str] | None = None) -> builtins.list[WorkspaceOut]:
        """Your workspaces that are not deleted; only those with `status` and all of `labels` if given.

        Raises APIError: 422 for an unknown status.
        """
        pairs = [("label", f"{k}={v}") for k, v in (labels or {}).items()] + ([("status", status)] if status else [])
        return _parse(
            WorkspaceList, self._call("GET", "/workspaces", params=httpx.QueryParams(tuple(pairs)))
        ).workspaces

    def get(self, workspace_id: str) -> WorkspaceOut:
        """One of your workspaces. Raises APIError: 404 when there is no such workspace of yours."""
        return _parse(WorkspaceOut, self._call("GET", f"/workspaces/{workspace_id}"))

    def delete(self, workspace_id: str) -> None:
        """Delete a workspace and everything in it. Raises APIError: 404 when it is not yours or gone."""
        self._call("DELETE", f"/workspaces/{workspace_id}")

    def stop(self, workspace_id: str) -> WorkspaceOut:
        """Stop a workspace, keeping its files; return it.

        Raises APIError: 400 when its provider cannot stop workspaces, 404, 409 when it is
        neither running nor stopped.
        """
        return _parse(WorkspaceOut, self._call("POST", f"/workspaces/{workspace_id}/stop"))

    def pause(self, workspace_id: str) -> WorkspaceOut:
        """Pause a workspace (its memory too where the runtime can: `memory_kept`); `start` resumes it.

        Raises APIError: 400 when its provider cannot stop workspaces, 404, 409.
        """
        return _parse(WorkspaceOut, self._call("POST", f"/workspaces/{workspace_id}/pause"))

    def start(self, workspace_id: str) -> WorkspaceOut:
        """Start a stopped workspace; return it. Raises APIError: 404, 409, 429."""
        return _parse(WorkspaceOut, self._call("POST", f"/workspaces/{workspace_id}/start"))

    def extend(self, workspace_id: str, ttl_days: float | None = None) -> WorkspaceOut:
        """Renew an ephemeral workspace's TTL from now; return it. Raises APIError: 404, 409 if persistent."""
        body = {"ttl_days": ttl_days} if ttl_days is not None else None
        return _parse(WorkspaceOut, self._call("POST", f"/workspaces/{workspace_id}/extend", json=body))

    def set_network(self, workspace_id: str, network: Literal["egress", "none"] | AllowOptions) -> WorkspaceOut:
        """Change a workspace's network policy ("egress" or an egress policy as at create); its new connections
        obey it on return. Raises APIError: 400 when its provider cannot, 404, 409 to or from "none", 422 for a
        bad rule or an unknown secret (the detail names it)."""
        body = {"network": network}
        return _parse(WorkspaceOut, self._call("PATCH", f"/workspaces/{workspace_id}/network", json=body))

    def git_push(self, workspace_id: str) -> PushOut:
        """Push the current branch of the workspace's repository (`repo` at create); what was pushed.

        Raises APIError: 404, 409 when it has no repository or nothing to push, 502 when GitHub refuses.
        """
        return _parse(PushOut, self._call("POST", f"/workspaces/{workspace_id}/git/push"))

    def exec(self, workspace_id: str, command: str | builtins.list[str], **options: Unpack[ExecOptions]) -> ExecOut:
        """Run a command (a shell string or an argv list) to its end; its exit code and output.

        Raises APIError: 400 when `cwd` is not a directory, 404, 409 when the workspace is not
        running, 410 when its sandbox is gone, 422 for bad options, 502/503 when the provider fails.
        """
        body = {"command": command, **options}
        return _parse(ExecOut, self._call("POST", f"/workspaces/{workspace_id}/exec", json=body))

    def exec_stream(
        self, workspace_id: str, command: str | builtins.list[str], **options: Unpack[ExecOptions]
    ) -> Iterator[ExecStreamEvent]:
        """Run a command and yield its output as it comes (`OutputEvent`), then an `ExitEvent`.

        If the command cannot go on, the last event is an `ErrorEvent` instead. Raises
        APIError (before the first event) as `exec`, and while iterating when a line is not an event.
        """
        body = {"command": command, **options}
        return self._stream("POST", f"/workspaces/{workspace_id}/exec/stream", _stream_event, json=body)

    def _stream(
        self,
        method: str,
        url: str,
        parse: Callable[[httpx.Response, str], Event],
        *,
        params: Query | None = None,
        json: object = None,
    ) -> Iterator[Event]:
        """The answer's NDJSON lines as events. Eager: the request is answered (or its error raised) before
        this returns, so that what the stream watches is in place; closing the iterator ends the request."""
        # No read timeout: a stream may stay silent for as long as what it follows does.
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        request = self._http.build_request(method, url, params=params, json=json, timeout=timeout)
        response = self._http.send(request, stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            _raise_for_status(response)
        return EventStream(response, parse)

    def read_tool(self, workspace_id: str, path: str, offset: int = 1, limit: int = 2000) -> ReadToolOut:
        """A text file's lines, numbered, from line `offset`; a directory's entries.

        Raises APIError: 403 when it may not be read, 404 when it does not exist, 409 when the
        workspace is not running, 413 for a file over 16 MiB, 422 for a relative path.
        """
        body = {"path": path, "offset": offset, "limit": limit}
        return _parse(ReadToolOut, self._call("POST", f"/workspaces/{workspace_id}/tools/read", json=body))

    def write_tool(self, workspace_id: str, path: str, content: str) -> WriteResult:
        """Write a text file whole, parents made.

        Raises APIError: 403, 404, 409 when the workspace is not running or `path` is a directory,
        422 for a relative path, 507 when the disk is full.
        """
        body = {"path": path, "content": content}
        return _parse(WriteResult, self._call("POST", f"/workspaces/{workspace_id}/tools/write", json=body))

    def edit_tool(self, workspace_id: str, path: str, old: str, new: str, replace_all: bool = False) -> int:
        """Replace `old` with `new` in a text file; how many times. Raises APIError: 422 when `old` is
        missing or not unique (without `replace_all`), 404."""
        body = {"path": path, "old_string": old, "new_string": new, "replace_all": replace_all}
        answer = self._call("POST", f"/workspaces/{workspace_id}/tools/edit", json=body)
        return _parse(EditToolOut, answer).replacements

    def glob_tool(self, workspace_id: str, pattern: str, path: str = "/workspace", limit: int = 1000) -> GlobToolOut:
        """Files under `path` matching `pattern` (`**` crosses directories), newest first.

        Raises APIError: 404 when `path` does not exist, 409 when the workspace is not running, 422.
        """
        body = {"pattern": pattern, "path": path, "limit": limit}
        return _parse(GlobToolOut, self._call("POST", f"/workspaces/{workspace_id}/tools/glob", json=body))

    def grep_tool(
        self, workspace_id: str, pattern: str, path: str = "/workspace", **options: Unpack[GrepOptions]
    ) -> GrepToolOut:
        """Lines matching a regular expression under `path`.

        Raises APIError: 404 for a missing path, 409 when the workspace is not running, 422 for a
        pattern the engine cannot parse.
        """
        body = {"pattern": pattern, "path": path, **options}
        return _parse(GrepToolOut, self._call("POST", f"/workspaces/{workspace_id}/tools/grep", json=body))

    def audit(self, workspace_id: str, limit: int = 100, before: int | None = None) -> AuditPage:
        """The calls made on the workspace, newest first; pass `next_before` as `before` for older ones.

        Raises APIError: 404 when it is not yours, 422 for a limit out of 1-1000.
        """
        params: Query = {"limit": limit} | ({"before": before} if before is not None else {})
        return _parse(AuditPage, self._call("GET", f"/workspaces/{workspace_id}/audit", params=params))

    def usage(self, workspace_id: str) -> UsageOut:
        """Its CPU and memory over the last hour. Raises APIError: 404 when it is not yours, or the
        server measures nothing (WORKSPACE_USAGE_INTERVAL=0)."""
        return _parse(UsageOut, self._call("GET", f"/workspaces/{workspace_id}/usage"))

    def listening_ports(self, workspace_id: str) -> builtins.list[int]:
        """The TCP ports something listens on in the workspace. Raises APIError: 404, 409 when it is not running."""
        return _parse(ListeningPorts, self._call("GET", f"/workspaces/{workspace_id}/ports")).ports

    def preview_url(self, workspace_id: str, port: int, expires_in: int = 3600) -> PreviewURL:
        """A URL a browser opens to reach the server on `port` in the workspace. Raises APIError: 404, 422."""
        url = f"/workspaces/{workspace_id}/ports/{port}/url"
        return _parse(PreviewURL, self._call("GET", url, params={"expires_in": expires_in}))

    # Shell sessions

    def open_session(self, workspace_id: str, cwd: str = "/workspace", env: dict[str, str] | None = None) -> str:
        """A new shell session; its id. Raises APIError: 400 without bash, 404, 409 when the workspace is not
        running."""
        body = {"cwd": cwd, "env": env or {}}
        return _parse(SessionOut, self._call("POST", f"/workspaces/{workspace_id}/sessions", json=body)).session_id

    def sessions(self, workspace_id: str) -> builtins.list[SessionOut]:
        """The workspace's open shell sessions. Raises APIError: 404, 409 when it is not running."""
        return _parse(SessionList, self._call("GET", f"/workspaces/{workspace_id}/sessions")).sessions

    def run_in_session(
        self, workspace_id: str, session_id: str, command: str, timeout: float | None = None
    ) -> SessionRunOut:
        """Run shell text in the session. Raises APIError: 404 for an unknown session, 409 when it has ended or
        is busy, 422 for a bad timeout."""
        url = f"/workspaces/{workspace_id}/sessions/{session_id}/run"
        return _parse(SessionRunOut, self._call("POST", url, json={"command": command, "timeout": timeout}))

    def close_session(self, workspace_id: str, session_id: str) -> None:
        """End the session's shell and what it started. Raises APIError: 404 for an unknown session."""
        self._call("DELETE", f"/workspaces/{workspace_id}/sessions/{session_id}")

    def read_file(self, workspace_id: str, path: str) -> bytes:
        """A file's content (a directory: see `read_path`).

        Raises APIError: 403 when it may not be read, 404 when it does not exist, 409 when the
        workspace is not running, 422 for a relative path.
        """
        return self._call("GET", f"/workspaces/{workspace_id}/files", params={"path": path}).content

    def list_dir(self, workspace_id: str, path: str) -> builtins.list[DirEntryOut]:
        """A directory's entries. Raises APIError: 404 when it does not exist, 409 when it is a file."""
        found = self.read_path(workspace_id, path)
        if not isinstance(found, DirListing):
            raise APIError(409, f"{path} is a file, not a directory")
        return found.entries

    def read_path(self, workspace_id: str, path: str) -> bytes | DirListing:
        """A file's content, or a directory's listing, in one request. Raises APIError as `read_file`."""
        response = self._call("GET", f"/workspaces/{workspace_id}/files", params={"path": path})
        if response.headers.get("content-type", "").startswith("application/json"):
            return _parse(DirListing, response)
        return response.content

    def write_file(self, workspace_id: str, path: str, data: Body, mode: str = "644") -> WriteResult:
        """Write a whole file (parents made as needed) with octal permissions `mode`; its path and size.

        Raises APIError: 404, 409 when the workspace is not running or `path` is a directory, 413
        past the server's upload limit, 422 for a bad path or mode, 507 when the workspace's disk is full.
        """
        response = self._call(
            "PUT", f"/workspaces/{workspace_id}/files", params={"path": path, "mode": mode}, content=data
        )
        return _parse(WriteResult, response)

    def read_archive(self, workspace_id: str, path: str) -> bytes:
        """A directory as a tar archive. Raises APIError: 400 when the provider cannot move archives, 404,
        409 when the workspace is not running."""
        return self._call("GET", f"/workspaces/{workspace_id}/archive", params={"path": path}).content

    def write_archive(self, workspace_id: str, path: str, tar_data: Body) -> None:
        """Unpack a tar archive into a directory. Raises APIError: 400 (bad archive or provider), 404, 409,
        413 past the server's upload limit, 507 when the disk is full."""
        self._call("PUT", f"/workspaces/{workspace_id}/archive", params={"path": path}, content=tar_data)

    def watch(self, workspace_id: str, path: str, recursive: bool = False) -> Iterator[WatchEventOut]:
        """What happens under directory `path` from now on, until the iterator is closed. Raises APIError
        (before the first event): 404 when the directory does not exist, 400 when the provider cannot."""
        params: Query = {"path": path, "recursive": recursive}
        return self._stream("GET", f"/workspaces/{workspace_id}/watch", _watch_event, params=params)

    # Background processes

    def start_process(
        self, workspace_id: str, command: str | builtins.list[str], **options: Unpack[ProcessOptions]
    ) -> ProcessOut:
        """Start a process in the background; it runs until it ends or is killed.

        Raises APIError: 400 when it cannot be started (or the provider has no background
        processes), 404, 409 when the workspace is not running, 422 for bad options.
        """
        body = {"command": command, **options}
        return _parse(ProcessOut, self._call("POST", f"/workspaces/{workspace_id}/processes", json=body))

    def processes(self, workspace_id: str) -> builtins.list[ProcessOut]:
        """Every background process of the workspace, running or exited.

        Raises APIError: 400 when its provider has no background processes, 404, 409 when it is not running.
        """
        return _parse(ProcessList, self._call("GET", f"/workspaces/{workspace_id}/processes")).processes

    def process(self, workspace_id: str, pid: int) -> ProcessOut:
        """One process. Raises APIError: 404 for an unknown PID."""
        return _parse(ProcessOut, self._call("GET", f"/workspaces/{workspace_id}/processes/{pid}"))

    def process_output(
        self, workspace_id: str, pid: int, offset: int = 0, follow: bool = False
    ) -> Iterator[ProcessStreamEvent]:
        """Its output from byte `offset` (resume from the last event's `next_offset`), then its exit if it has
        ended; with `follow`, until it ends. Raises APIError (before the first event): 404 for an unknown PID,
        409 when the workspace is not running; while iterating when a line is not an event."""
        params: Query = {"offset": offset, "follow": follow}
        url = f"/workspaces/{workspace_id}/processes/{pid}/output"
        return self._stream("GET", url, _process_event, params=params)

    def write_stdin(self, workspace_id: str, pid: int, data: Body) -> None:
        """Send `data` to its stdin. Raises APIError: 404 for an unknown PID, 409 when it has no stdin (any
        more) or has exited, 413 past the server's request limit."""
        self._call("POST", f"/workspaces/{workspace_id}/processes/{pid}/stdin", content=data)

    def close_stdin(self, workspace_id: str, pid: int) -> None:
        """End its stdin (it reads end-of-file). Raises APIError: 404, 409 when it has no stdin or has exited."""
        self._call("POST", f"/workspaces/{workspace_id}/processes/{pid}/stdin/close")

    def signal(self, workspace_id: str, pid: int, signal: str) -> None:
        """Signal its process group. Raises APIError: 404, 409 when it has exited, 422 for an unknown signal."""
        self._call("POST", f"/workspaces/{workspace_id}/processes/{pid}/signal", json={"signal": signal})

    def resize(self, workspace_id: str, pid: int, cols: int, rows: int) -> None:
        """Resize its terminal. Raises APIError: 404, 409 when it has none, 422 for an absurd size."""
        self._call("POST", f"/workspaces/{workspace_id}/processes/{pid}/resize", json={"cols": cols, "rows": rows})

    def kill(self, workspace_id: str, pid: int) -> None:
        """Kill it and its whole process group; returns once they are gone (one already exited is no error).

        Raises APIError: 404 for an unknown PID, 409 when the workspace is not running.
        """
        self._call("DELETE", f"/workspaces/{workspace_id}/processes/{pid}")


def _parse(model: type[Model], response: httpx.Response) -> Model:
    """The answer as `model`; an APIError if it is not one (not an agentbox server, or another version)."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise APIError(response.status_code, f"the server's answer is not a {model.__name__}: {exc}") from None


def _stream_event(response: httpx.Response, line: str) -> ExecStreamEvent:
    try:
        payload = json.loads(line)
        if "stream" in payload:
            return OutputEvent.model_validate(payload)
        if "exit_code" in payload:
            return ExitEvent.model_validate(payload)
        return ErrorEvent.model_validate(payload)
    except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
        raise APIError(response.status_code, f"the server streamed a line that is not an exec event: {exc}") from None


class EventStream(Iterator[Event]):
    """The events of a streamed answer, as they come. `close()` ends the request, read or not (closing
    a generator that was never started would not run its clean-up: the request would stay open)."""

    def __init__(self, response: httpx.Response, parse: Callable[[httpx.Response, str], Event]) -> None:
        self._response = response
        self._events = (parse(response, line) for line in response.iter_lines() if line)

    def __next__(self) -> Event:
        try:
            return next(self._events)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._events.close()
        self._response.close()


def _build_log_line(_response: httpx.Response, line: str) -> BuildLogLine:
    return BuildLogLine.model_validate_json(line)


def _watch_event(_response: httpx.Response, line: str) -> WatchEventOut:
    return WatchEventOut.model_validate_json(line)


def _process_event(response: httpx.Response, line: str) -> ProcessStreamEvent:
    try:
        return process_event(json.loads(line))
    except ValueError as exc:
        raise APIError(response.status_code, f"the server streamed a line that is not a process event: {exc}") from None


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = ErrorOut.model_validate_json(response.content).detail
    except ValidationError:  # not the API's error body (a proxy in between, say): what it said, as text
        detail = response.text or f"HTTP {response.status_code} without a body"
    raise APIError(response.status_code, detail)
