"""API abuse: every endpoint of the live schema wants a key, keeps owners apart, and caps what it reads.

The endpoints come from the server's own OpenAPI document, so a new one that is not covered
here fails these tests until it is.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator

import httpx
import pytest

from agentbox.client import APIError, Client

from .conftest import KEYS, Server
from .github_standin import new_private_key

PUBLIC = {("GET", "/api/v1/health")}  # and the schema itself, which describes the API and holds no data


def endpoints(server: Server) -> set[tuple[str, str]]:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    return {(method.upper(), path) for path, methods in schema["paths"].items() for method in methods}


def test_every_endpoint_but_health_wants_a_valid_key(server: Server) -> None:
    found = endpoints(server)
    assert ("GET", "/metrics") in found and ("POST", "/api/v1/workspaces") in found
    for method, path in sorted(found - PUBLIC):
        url = server.url + path.replace("{workspace_id}", "ws-0123456789abcdef").replace(
            "{app_id}", "gh-0123456789abcdef"
        ).replace("{pid}", "1")
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "Basic YTpi"}):
            response = httpx.request(method, url, headers=headers, params={"path": "/workspace"})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "key" in response.json()["detail"]
            assert response.headers["WWW-Authenticate"] == "Bearer"
    for method, path in PUBLIC:
        assert httpx.request(method, server.url + path).status_code == 200
        # A key it is given must work, or a guesser would test keys here without being refused.
        wrong = httpx.request(method, server.url + path, headers={"Authorization": "Bearer wrong-key-0123456789"})
        assert wrong.status_code == 401, (method, path)


def archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("pwned")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


@pytest.fixture
def victim(alice: Client) -> Iterator[str]:
    workspace_id = alice.create().id
    alice.write_file(workspace_id, "/workspace/secret.txt", b"alice's")
    yield workspace_id
    alice.delete(workspace_id)


def test_no_endpoint_lets_one_owner_reach_another_s_workspace_or_app(
    server: Server, alice: Client, bob: Client, victim: str
) -> None:
    alice_app = alice._call("POST", "/github/apps", json={"app_id": 1, "private_key": new_private_key()}).json()["id"]
    try:
        # A well-formed request for every endpoint that names a workspace or an App, as its owner would send it.
        processes = "/api/v1/workspaces/{workspace_id}/processes"
        tools = "/api/v1/workspaces/{workspace_id}/tools"
        sessions = "/api/v1/workspaces/{workspace_id}/sessions"
        process = processes + "/{pid}"
        attempts: dict[tuple[str, str], Callable[[], object]] = {
            ("GET", "/api/v1/workspaces/{workspace_id}"): lambda: bob.get(victim),
            ("DELETE", "/api/v1/workspaces/{workspace_id}"): lambda: bob.delete(victim),
            ("POST", "/api/v1/workspaces/{workspace_id}/stop"): lambda: bob.stop(victim),
            ("POST", "/api/v1/workspaces/{workspace_id}/pause"): lambda: bob.pause(victim),
            ("POST", "/api/v1/workspaces/{workspace_id}/start"): lambda: bob.start(victim),
            ("POST", "/api/v1/workspaces/{workspace_id}/extend"): lambda: bob.extend(victim),
            ("POST", "/api/v1/workspaces/{workspace_id}/exec"): lambda: bob.exec(victim, "touch /workspace/pwned"),
            ("POST", "/api/v1/workspaces/{workspace_id}/exec/stream"): lambda: list(
                bob.exec_stream(victim, "touch /workspace/pwned")
            ),
            ("GET", "/api/v1/workspaces/{workspace_id}/files"): lambda: bob.read_file(victim, "/workspace/secret.txt"),
            ("PUT", "/api/v1/workspaces/{workspace_id}/files"): lambda: bob.write_file(
                victim, "/workspace/pwned", b"x"
            ),
            ("GET", "/api/v1/workspaces/{workspace_id}/archive"): lambda: bob.read_archive(victim, "/workspace"),
            ("PUT", "/api/v1/workspaces/{workspace_id}/archive"): lambda: bob.write_archive(
                victim, "/workspace", archive()
            ),
            ("POST", "/api/v1/workspaces/{workspace_id}/git/push"): lambda: bob._call(
                "POST", f"/workspaces/{victim}/git/push"
            ),
            ("GET", "/api/v1/workspaces/{workspace_id}/watch"): lambda: bob.watch(victim, "/workspace"),
            ("POST", f"{tools}/read"): lambda: bob.read_tool(victim, "/workspace/secret.txt"),
            ("POST", f"{tools}/write"): lambda: bob.write_tool(victim, "/workspace/pwned", "x"),
            ("POST", f"{tools}/edit"): lambda: bob.edit_tool(victim, "/workspace/secret.txt", "s", "x"),
            ("POST", f"{tools}/glob"): lambda: bob.glob_tool(victim, "**"),
            ("POST", f"{tools}/grep"): lambda: bob.grep_tool(victim, "secret"),
            ("POST", f"{sessions}"): lambda: bob.open_session(victim),
            ("GET", f"{sessions}"): lambda: bob.sessions(victim),
            ("POST", f"{sessions}/{{session_id}}/run"): lambda: bob.run_in_session(victim, "1", "touch /tmp/pwned"),
            ("DELETE", f"{sessions}/{{session_id}}"): lambda: bob.close_session(victim, "1"),
            ("GET", "/api/v1/workspaces/{workspace_id}/ports/{port}/url"): lambda: bob._call(
                "GET", f"/workspaces/{victim}/ports/8000/url"
            ),
            ("GET", "/api/v1/workspaces/{workspace_id}/audit"): lambda: bob.audit(victim),
            ("GET", "/api/v1/workspaces/{workspace_id}/usage"): lambda: bob.usage(victim),
            ("PATCH", "/api/v1/workspaces/{workspace_id}/network"): lambda: bob.set_network(victim, "none"),
            ("POST", "/api/v1/workspaces/{workspace_id}/snapshots"): lambda: bob.snapshot(victim),
            ("POST", "/api/v1/workspaces/{workspace_id}/fork"): lambda: bob.fork(victim),
            ("GET", "/api/v1/workspaces/{workspace_id}/ports"): lambda: bob.listening_ports(victim),
            ("POST", f"{processes}"): lambda: bob.start_process(victim, ["true"]),
            ("GET", f"{processes}"): lambda: bob.processes(victim),
            ("GET", f"{process}"): lambda: bob.process(victim, 1),
            ("DELETE", f"{process}"): lambda: bob.kill(victim, 1),
            ("GET", f"{process}/output"): lambda: list(bob.process_output(victim, 1)),
            ("POST", f"{process}/stdin"): lambda: bob.write_stdin(victim, 1, b"x"),
            ("POST", f"{process}/stdin/close"): lambda: bob.close_stdin(victim, 1),
            ("POST", f"{process}/signal"): lambda: bob.signal(victim, 1, "SIGKILL"),
            ("POST", f"{process}/resize"): lambda: bob.resize(victim, 1, 80, 24),
            ("POST", f"{process}/terminal/token"): lambda: bob._call(
                "POST", f"/workspaces/{victim}/processes/1/terminal/token"
            ),
            ("GET", "/api/v1/github/apps/{app_id}"): lambda: bob._call("GET", f"/github/apps/{alice_app}"),
            ("DELETE", "/api/v1/github/apps/{app_id}"): lambda: bob._call("DELETE", f"/github/apps/{alice_app}"),
        }
        naming_a_resource = {e for e in endpoints(server) if "{workspace_id}" in e[1] or "{app_id}" in e[1]}
        assert set(attempts) == naming_a_resource, "an endpoint without an owner-isolation case"
        for endpoint, attempt in attempts.items():
            with pytest.raises(APIError) as denied:
                attempt()
            assert denied.value.status_code == 404, (endpoint, denied.value)  # as if it did not exist
            assert victim in str(denied.value.detail) or alice_app in str(denied.value.detail)
        assert victim not in [w.id for w in bob.list()]
        assert alice._call("GET", f"/github/apps/{alice_app}").json()["id"] == alice_app
    finally:  # a failure must not leave Alice an App that the next tests would meet
        alice._call("DELETE", f"/github/apps/{alice_app}")
    # Alice's workspace went on as before: running, her file there, nothing of Bob's.
    assert alice.get(victim).status == "running"
    assert alice.exec(victim, "ls /workspace").stdout == "secret.txt\n"


def test_request_bodies_are_capped(server: Server, alice: Client, victim: str) -> None:
    url = f"{server.url}/api/v1/workspaces/{victim}/exec"
    headers = {"Authorization": f"Bearer {KEYS['alice']}", "Content-Type": "application/json"}
    huge = b'{"command": "' + b"a" * (9 << 20) + b'"}'  # over the 8 MiB default of WORKSPACE_MAX_REQUEST

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(huge), 1 << 20):
            yield huge[start : start + (1 << 20)]

    for body in (huge, chunked()):
        response = httpx.post(url, content=body, headers=headers, timeout=60)
        assert response.status_code == 413, response.text
        assert "WORKSPACE_MAX_REQUEST" in response.json()["detail"]
    # Under the cap it is an ordinary request.
    assert alice.exec(victim, "echo " + "b" * 100_000).stdout == "b" * 100_000 + "\n"
