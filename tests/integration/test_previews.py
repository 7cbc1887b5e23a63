"""Port previews over real workspaces: a server inside, reached through agentbox by HTTP and WebSocket."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agentbox.client import Client
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import KEYS, Server, eventually

ECHO_SERVER = (Path(__file__).parent / "data" / "echo_server.py").read_bytes()
PORT = 8000


def start_echo_server(client: Client, workspace_id: str, port: int = PORT) -> None:
    client.write_file(workspace_id, "/workspace/echo_server.py", ECHO_SERVER)
    client.start_process(workspace_id, ["python3", "/workspace/echo_server.py", str(port)], tag="web")
    eventually(lambda: through_api(client, workspace_id, "/ready").status_code == 200, timeout=30)


def through_api(client: Client, workspace_id: str, path: str, **kwargs: object) -> httpx.Response:
    return client._http.request(  # the typed client's own connection, with its bearer key
        str(kwargs.pop("method", "GET")),
        f"/workspaces/{workspace_id}/ports/{PORT}{path}",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def web(alice: Client, workspace: WorkspaceOut) -> Iterator[WorkspaceOut]:
    start_echo_server(alice, workspace.id)
    yield workspace


def test_the_api_form_reaches_the_server_and_keeps_the_key_out(alice: Client, bob: Client, web: WorkspaceOut) -> None:
    answer = through_api(alice, web.id, "/some/path?x=1&y=%2F", method="POST", content=b"hello")
    assert answer.status_code == 200 and answer.headers["x-served-by"] == "echo"
    # On agentbox's own origin the app's answer is sandboxed and sets no cookie (test_attack_previews.py).
    assert "set-cookie" not in answer.headers and answer.headers["content-security-policy"].startswith("sandbox ")
    seen = answer.json()
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/some/path?x=1&y=%2F", "hello")
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert "authorization" not in headers and headers["host"] == f"localhost:{PORT}"
    assert headers["x-forwarded-prefix"] == f"/api/v1/workspaces/{web.id}/ports/{PORT}"
    assert through_api(bob, web.id, "/").status_code == 404  # another owner's workspace
    assert bob._http.get(f"/workspaces/{web.id}/ports/{PORT}/url").status_code == 404


def test_a_preview_url_works_without_a_key_and_only_for_its_port(
    server: Server, alice: Client, web: WorkspaceOut
) -> None:
    preview = alice._http.get(f"/workspaces/{web.id}/ports/{PORT}/url").json()
    assert preview["path_url"].startswith(f"{server.url}/preview/")
    page = httpx.get(preview["path_url"] + "index.html?q=1")
    assert page.status_code == 200 and page.json()["path"] == "/index.html?q=1"

    # The host form: {port}-{id}.{domain}; the token moves from the query to a cookie of that host.
    parts = urlsplit(preview["url"])
    assert parts.hostname == f"{PORT}-{web.id}.preview.localhost"
    host = parts.netloc
    local = f"{server.url}{parts.path}?{parts.query}"
    first = httpx.get(local, headers={"host": host})
    assert first.status_code == 307 and "agentbox_preview=" in first.headers["set-cookie"]
    assert first.headers["location"] == f"http://{host}/"
    cookie = first.headers["set-cookie"].split(";")[0]
    page = httpx.get(f"{server.url}/app.js", headers={"host": host, "cookie": f"{cookie}; theirs=1"})
    assert page.status_code == 200 and page.json()["path"] == "/app.js"
    # Its own origin: the app's answer as it is, a repeated header still repeated.
    assert page.headers.get_list("set-cookie") == ["first=1", "second=2"]
    assert "content-security-policy" not in page.headers
    assert page.json()["headers"].get("cookie") == "theirs=1"  # agentbox's own cookie stays here
    assert httpx.get(f"{server.url}/app.js", headers={"host": host}).status_code == 403  # no token
    other_port = host.replace(f"{PORT}-", "8001-", 1)
    assert httpx.get(f"{server.url}/", headers={"host": other_port, "cookie": cookie}).status_code == 403

    command = [sys.executable, "-m", "agentbox.cli", "ws", "preview", web.id, str(PORT)]
    printed = subprocess.run(
        [*command, "--url", server.url, "--api-key", KEYS["alice"]], capture_output=True, text=True, check=True
    ).stdout
    assert printed.startswith(f"http://{host}/?agentbox_preview=")

    token = preview["path_url"].rstrip("/").rsplit("/", 1)[1]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refused = httpx.get(f"{server.url}/preview/{forged}/")
    assert refused.status_code == 403 and "GET /api/v1/workspaces/" in refused.json()["detail"]
    assert httpx.get(f"{server.url}/preview/not-a-token/").status_code == 403


def test_a_websocket_is_relayed_both_ways(server: Server, alice: Client, web: WorkspaceOut) -> None:
    api = server.url.replace("http", "ws") + f"/api/v1/workspaces/{web.id}/ports/{PORT}/socket"
    with connect(api, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as socket:
        socket.send("hello")
        assert socket.recv(timeout=10) == "echo: hello"
        socket.send(b"\x00\x01binary")
        assert socket.recv(timeout=10) == b"echo: \x00\x01binary"
    preview = alice._http.get(f"/workspaces/{web.id}/ports/{PORT}/url").json()["path_url"]
    with connect(preview.replace("http", "ws") + "socket") as socket:
        socket.send("x" * 70_000)
        assert socket.recv(timeout=10) == "echo: " + "x" * 70_000
    with pytest.raises(InvalidStatus) as refused:
        connect(api).close()  # no key
    assert refused.value.response.status_code == 401


def test_previews_need_no_network_and_say_when_nothing_listens(alice: Client) -> None:
    offline = alice.create(provider="gvisor", network="none")
    try:
        start_echo_server(alice, offline.id)
        assert through_api(alice, offline.id, "/").json()["path"] == "/"
        closed = alice._http.get(f"/workspaces/{offline.id}/ports/9/")
        assert closed.status_code == 502 and "nothing listens on port 9" in closed.json()["detail"]
        bad_port = alice._http.get(f"/workspaces/{offline.id}/ports/70000/")
        assert bad_port.status_code == 422
    finally:
        alice.delete(offline.id)
