"""API keys as records, over a real server: made, used, revoked (everything they opened closes within a
second), quotas refused by name, keys of WORKSPACE_API_KEYS kept in step, the CLI, and rate limits."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from e2b import Sandbox
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from agentbox.client import APIError, Client

from .conftest import KEYS, Server
from .test_previews import PORT, start_echo_server

#: A revocation must reach every way in within a second; the check allows for the test's own latency.
REVOKED_WITHIN = 1.5
MCP_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


@pytest.fixture
def admin(server: Server) -> Iterator[Client]:
    """alice: the first owner of WORKSPACE_API_KEYS, so an admin (WORKSPACE_ADMINS is unset)."""
    with server.client("alice") as client:
        yield client


def new_owner() -> str:
    return f"carol-{uuid.uuid4().hex[:8]}"


def refused_within(seconds: float, attempt: Callable[[], int]) -> float:
    """Seconds until `attempt()` (a status code) is a 401; fails past `seconds`."""
    started = time.monotonic()
    while True:
        status = attempt()
        elapsed = time.monotonic() - started
        if status == 401:
            return elapsed
        assert elapsed < seconds, f"still {status} after {elapsed:.2f} s"
        time.sleep(0.05)


def wait_closed(socket: ClientConnection) -> None:
    """Read until the server closes the socket (a revoked key's close code, or a plain close)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            socket.recv(timeout=REVOKED_WITHIN * 4)
    assert closed.value.rcvd is None or closed.value.rcvd.code in (1000, 1008, 1011, 1014)


def test_a_key_works_until_it_is_revoked_and_then_nothing_it_opened_does(
    server: Server, admin: Client, sdk: str
) -> None:
    owner = new_owner()
    made = admin.create_key(owner, "agent", max_workspaces=3)
    keeper = admin.create_key(owner, "cleanup")  # the owner's other key: it cleans up after the revocation
    assert made.secret.startswith("agbx_") and made.owner == owner and not made.admin
    listed = {key.id: key for key in admin.list_keys(owner=owner)}
    assert made.id in listed and "secret" not in listed[made.id].model_dump()

    sandbox = Sandbox.create(api_key=made.secret, timeout=600)
    try:
        carol = Client(server.url, made.secret)
        assert carol.my_key().owner == owner
        workspace_id = sandbox.sandbox_id
        assert carol.get(workspace_id).owner == owner
        start_echo_server(carol, workspace_id)
        preview = carol._http.get(f"/workspaces/{workspace_id}/ports/{PORT}/url").json()["path_url"]
        shell = carol.start_process(workspace_id, ["/bin/sh"], pty={"cols": 80, "rows": 24})
        terminal_token = carol._http.post(f"/workspaces/{workspace_id}/processes/{shell.pid}/terminal/token").json()
        bearer = {"Authorization": f"Bearer {made.secret}"}
        envd = {"E2b-Sandbox-Id": workspace_id, "X-Access-Token": sandbox._envd_access_token or ""}
        ws_root = server.url.replace("http", "ws")

        # Every way in works before...
        ways: dict[str, Callable[[], int]] = {
            "api": lambda: httpx.get(f"{server.url}/api/v1/workspaces/{workspace_id}", headers=bearer).status_code,
            "e2b": lambda: httpx.get(f"{server.url}/e2b/v2/sandboxes", headers={"X-API-Key": made.secret}).status_code,
            "envd": lambda: (
                httpx.get(
                    f"{server.url}/e2b/envd/files", params={"path": "/workspace/echo_server.py"}, headers=envd
                ).status_code
            ),
            "mcp": lambda: (
                httpx.post(
                    f"{server.url}/mcp",
                    json=MCP_INITIALIZE,
                    headers={**bearer, "Accept": "application/json, text/event-stream"},
                ).status_code
            ),
            "preview link": lambda: _unauthorized(httpx.get(preview + "ready")),
        }
        assert {name: attempt() for name, attempt in ways.items()} == dict.fromkeys(ways, 200)
        with (
            connect(preview.replace("http", "ws") + "socket") as live_preview,
            connect(
                f"{ws_root}/api/v1/workspaces/{workspace_id}/ports/{PORT}/socket", additional_headers=bearer
            ) as live_api,
            connect(
                f"{ws_root}/api/v1/workspaces/{workspace_id}/processes/{shell.pid}/terminal?token={terminal_token['token']}"
            ) as terminal,
        ):
            for socket in (live_preview, live_api):
                socket.send("before")
                assert socket.recv(timeout=10) == "echo: before"

            # ... and nothing does within a second of the revocation, live connections included.
            assert admin.revoke_key(made.id).revoked_at is not None
            revoked = time.monotonic()
            for socket in (live_preview, live_api, terminal):
                wait_closed(socket)
            assert time.monotonic() - revoked < REVOKED_WITHIN
            took = {name: refused_within(REVOKED_WITHIN, attempt) for name, attempt in ways.items()}
            assert all(seconds < REVOKED_WITHIN for seconds in took.values()), took
        with pytest.raises(APIError) as refused:
            carol.list()
        assert refused.value.status_code == 401 and "revoked" in refused.value.detail
        assert made.id in {key.id for key in admin.list_keys(owner=owner, include_revoked=True)}
        assert made.id not in {key.id for key in admin.list_keys(owner=owner)}
    finally:
        with Client(server.url, keeper.secret) as cleanup:
            cleanup.delete(sandbox.sandbox_id)


def _unauthorized(response: httpx.Response) -> int:
    """A preview's refusal (403: the link no longer opens anything) read as the 401 the others give."""
    return 401 if response.status_code in (401, 403) else response.status_code


def test_tokens_are_signed_by_the_server_and_carry_their_key_and_purpose(
    server: Server, admin: Client, web_workspace: str
) -> None:
    preview = admin._http.get(f"/workspaces/{web_workspace}/ports/{PORT}/url").json()["path_url"]
    token = preview.rstrip("/").rsplit("/", 1)[1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["use"] == "preview" and claims["kid"] == admin.my_key().id and claims["sub"] == "alice"
    with pytest.raises(jwt.InvalidSignatureError):  # the API key is no material to check it with
        jwt.decode(token, KEYS["alice"], algorithms=["HS256"])
    # A preview link is no terminal token, for the same workspace or any other purpose.
    shell = admin.start_process(web_workspace, ["/bin/sh"], pty={"cols": 80, "rows": 24})
    terminal = f"/api/v1/workspaces/{web_workspace}/processes/{shell.pid}/terminal?token={token}"
    with pytest.raises(InvalidStatus) as as_terminal:
        connect(server.url.replace("http", "ws") + terminal).close()
    assert as_terminal.value.response.status_code == 401
    forged = jwt.encode({**claims, "use": "preview"}, KEYS["alice"], algorithm="HS256")  # signed the old way
    assert httpx.get(f"{server.url}/preview/{forged}/ready").status_code == 403
    # The links work, and nothing of them reaches the server's log.
    assert httpx.get(preview + "ready").status_code == 200
    assert token not in server.log()


@pytest.fixture
def web_workspace(admin: Client) -> Iterator[str]:
    workspace = admin.create(provider="gvisor")
    try:
        start_echo_server(admin, workspace.id)
        yield workspace.id
    finally:
        admin.delete(workspace.id)


def test_only_admins_manage_keys(server: Server, admin: Client) -> None:
    with server.client("bob") as bob:
        with pytest.raises(APIError) as refused:
            bob.create_key("bob", "mine")
        assert refused.value.status_code == 403 and "admin" in refused.value.detail
        assert {key.owner for key in bob.list_keys()} == {"bob"}
        assert {key.owner for key in bob.list_keys(owner="alice")} == {"bob"}  # the filter is an admin's
        alices = admin.my_key().id
        with pytest.raises(APIError) as hidden:
            bob.revoke_key(alices)
        assert hidden.value.status_code == 404
    assert admin.my_key().admin
    with pytest.raises(APIError) as last:
        admin.revoke_key(admin.my_key().id)  # the only admin key: nobody could manage keys afterwards
    assert last.value.status_code == 400 and "last admin" in last.value.detail
    with pytest.raises(APIError) as bad:
        admin.create_key("not an owner!", "x")
    assert bad.value.status_code == 422 and "body.owner" in bad.value.message


def test_quotas_are_refused_with_a_429_that_names_them(server: Server, admin: Client) -> None:
    owner = new_owner()
    counted = admin.create_key(owner, "one at a time", max_workspaces=1, max_cpus=1.5, max_memory="768M")
    made: list[str] = []
    try:
        with Client(server.url, counted.secret) as limited:
            made.append(limited.create(cpu=1, memory="512M").id)
            for options, quota in (
                ({"cpu": 0.5, "memory": "128M"}, "max_workspaces"),
                ({}, "max_workspaces"),
            ):
                with pytest.raises(APIError) as refused:
                    limited.create(**options)
                assert refused.value.status_code == 429 and quota in refused.value.detail
            limited.stop(made[0])
            with pytest.raises(APIError) as too_big:
                limited.create(cpu=2)
            assert too_big.value.status_code == 429 and "max_cpus" in too_big.value.detail
            with pytest.raises(APIError) as too_much:
                limited.create(memory="1G")
            assert too_much.value.status_code == 429 and "max_memory" in too_much.value.detail
            made.append(limited.create(cpu=0.5, memory="256M").id)  # within every quota: fine
            with pytest.raises(APIError) as restart:
                limited.start(made[0])  # a start counts like a create
            assert restart.value.status_code == 429 and "max_workspaces" in restart.value.detail
            assert {w.id for w in limited.list()} == set(made)  # the refusals left nothing behind
    finally:
        with Client(server.url, counted.secret) as limited:
            for workspace_id in made:
                limited.delete(workspace_id)


def test_keys_of_the_environment_follow_it_and_the_cli_manages_keys(tmp_path: Path) -> None:
    first, second = "first-admin-key-0123456789", "second-admin-key-0123456789"
    env = {"ENABLE_AGENT_WORKSPACES": "false", "WORKSPACE_API_KEYS": f"root:{first}"}
    server = Server(tmp_path, env=env).start()
    try:
        made = _cli(server, first, "keys", "create", "--owner", "dave", "--name", "laptop", "--max-workspaces", "2")
        secret = made.stdout.strip()
        assert made.returncode == 0 and secret.startswith("agbx_") and "shown this once" in made.stderr
        listing = _cli(server, first, "keys", "ls", "--owner", "dave")
        assert "laptop" in listing.stdout and "dave" in listing.stdout and secret not in listing.stdout
        with Client(server.url, secret) as dave:
            key = dave.my_key()
            assert key.owner == "dave" and key.max_workspaces == 2 and key.source == "api"
        denied = _cli(server, secret, "keys", "create", "--owner", "dave", "--name", "more")
        assert denied.returncode == 1 and "admin" in denied.stderr and "403" in denied.stderr
        revoked = _cli(server, first, "keys", "revoke", key.id)
        assert revoked.returncode == 0 and key.id in revoked.stdout
        assert (
            httpx.get(f"{server.url}/api/v1/keys/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
        )
        missing = _cli(server, "", "keys", "ls")
        assert missing.returncode == 2 and "AGENTBOX_API_KEY" in missing.stderr
    finally:
        server.stop()
    # The variable changed: its new key is made (an admin), the one taken out of it stops working.
    server = Server(tmp_path, env={**env, "WORKSPACE_API_KEYS": f"root:{second}"}).start()
    try:
        assert (
            httpx.get(f"{server.url}/api/v1/keys/me", headers={"Authorization": f"Bearer {first}"}).status_code == 401
        )
        with Client(server.url, second) as root:
            assert root.my_key().admin and root.my_key().source == "env"
            assert "dave" in {key.owner for key in root.list_keys(include_revoked=True)}  # kept across restarts
        database = (tmp_path / "agentbox.db").read_bytes()
        assert first.encode() not in database and second.encode() not in database and secret.encode() not in database
    finally:
        server.stop()


def _cli(server: Server, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentbox.cli", *args, "--url", server.url],
        env={"PATH": "/usr/bin:/bin", "AGENTBOX_API_KEY": key, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_failed_authentication_and_anonymous_calls_are_rate_limited(tmp_path: Path) -> None:
    key = "limited-admin-key-0123456789"
    env = {
        "ENABLE_AGENT_WORKSPACES": "false",
        "WORKSPACE_API_KEYS": f"root:{key}",
        "WORKSPACE_RATE_LIMIT_FAILURES": "5/minute",
        "WORKSPACE_RATE_LIMIT_ANONYMOUS": "20/minute",
    }
    server = Server(tmp_path, env=env).start()  # its start-up polls /health without a key: a few anonymous calls
    try:
        with httpx.Client(base_url=f"{server.url}/api/v1") as http:
            statuses = [http.get("/health").status_code for _ in range(25)]
            assert statuses[-1] == 429 and 200 in statuses
            good = {"Authorization": f"Bearer {key}"}
            assert http.get("/keys/me", headers=good).status_code == 200  # a key is no anonymous call
            guesses = [http.get("/keys/me", headers={"Authorization": f"Bearer guess-{i}"}) for i in range(5)]
            assert [r.status_code for r in guesses] == [401] * 5
            blocked = http.get("/keys/me", headers={"Authorization": "Bearer guess-5"})
            assert blocked.status_code == 429 and "refused credentials" in blocked.json()["detail"]
            assert 1 <= int(blocked.headers["retry-after"]) <= 60
            assert http.get("/keys/me", headers=good).status_code == 429  # the address, not the key, is refused
    finally:
        server.stop()
