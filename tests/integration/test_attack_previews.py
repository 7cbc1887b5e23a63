"""Attacks through port previews and proxied traffic, by an app in a real gVisor workspace that means harm.

The app (HOSTILE_APP, Python's asyncio, one thread) sets cookies, a service worker's scope for
the whole origin, Clear-Site-Data and other origin-wide headers, echoes what it received, keeps
WebSockets open and ignores their closes, reads a body only after a while, and answers a
WebSocket upgrade in HTTP/1.0. Each test shows what it tried refused or contained: on agentbox's
own origin its answers are an opaque origin that sets nothing; browsers get previews on origins
of their own (`{port}-{id}.localhost` when no preview domain is set); no token reaches it; bodies
are limited and paced by it; WebSockets cost no thread, are capped, and close when either end goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import sync_playwright
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from agentbox.client import APIError, Client
from tests.browser import launch

from .conftest import KEYS, Server, eventually

PORT = 8000
LIMIT = 64 << 20  # WORKSPACE_MAX_PROXIED_BODY of the server here
PER_WORKSPACE = 100  # WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE of the server here

HOSTILE_APP = r'''
import asyncio, base64, hashlib, json, sys

OPEN = set()  # WebSocket connections still open
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAGE = """<!doctype html><title>hostile app</title><h1>hostile app</h1>
<p id="cookies">%s</p><p id="sw">trying</p><p id="script">no script</p>
<script src="page.js"></script>"""
SCRIPT = """document.getElementById("script").textContent = "script ran";
try {
  navigator.serviceWorker.register("sw.js", {scope: "/"}).then(
    () => { document.getElementById("sw").textContent = "registered"; },
    (e) => { document.getElementById("sw").textContent = "refused: " + e.name; });
} catch (e) { document.getElementById("sw").textContent = "refused: " + e.name; }
try { document.cookie = "from_script=1; path=/"; } catch (e) {}"""
WORKER = "self.addEventListener('fetch', (e) => {});"


async def head(reader):
    raw = await reader.readuntil(b"\r\n\r\n")
    line, *fields = raw.decode("latin-1").split("\r\n")
    headers = [tuple(f.split(":", 1)) for f in fields if ":" in f]
    return line.split(" ")[:2], [(k.strip(), v.strip()) for k, v in headers]


async def body(reader, headers):
    found = {k.lower(): v for k, v in headers}
    size = 0
    if "content-length" in found:
        left = int(found["content-length"])
        while left:
            chunk = await reader.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            size += len(chunk)
    elif "chunked" in found.get("transfer-encoding", ""):
        while True:
            length = int((await reader.readline()).split(b";")[0], 16)
            if length == 0:
                await reader.readline()
                break
            size += len(await reader.readexactly(length))
            await reader.readline()
    return size


def answer(writer, status, headers, data):
    lines = [f"HTTP/1.1 {status}", *[f"{k}: {v}" for k, v in headers], f"Content-Length: {len(data)}", "", ""]
    writer.write("\r\n".join(lines).encode() + data)


async def serve(reader, writer):
    try:
        (method, target), headers = await head(reader)
    except Exception:
        writer.close()
        return
    path, _, query = target.partition("?")
    upgrade = any(k.lower() == "upgrade" for k, _ in headers)
    if upgrade:
        await websocket(reader, writer, path, headers)
        return
    if path == "/slow":  # takes the body only after a while
        await asyncio.sleep(float(query.split("=")[1]))
    size = await body(reader, headers)
    hostile = [
        ("Set-Cookie", "hostile=" + sys.argv[2] + "; Path=/"),
        ("Set-Cookie", "tossed=" + sys.argv[2] + "; Path=/; Domain=localhost"),
        ("Service-Worker-Allowed", "/"),
        ("Strict-Transport-Security", "max-age=31536000"),
        ("NEL", '{"report_to": "x", "max_age": 86400}'),
        ("Content-Security-Policy", "default-src *"),
        ("X-Served-By", "hostile"),
    ]
    cookies = {k.lower(): v for k, v in headers}.get("cookie", "")
    if path in ("/", "/page.html"):
        data, kind = (PAGE % cookies).encode(), "text/html"
    elif path.endswith("page.js"):
        data, kind = SCRIPT.encode(), "text/javascript"
    elif path.endswith("sw.js"):
        data, kind = WORKER.encode(), "text/javascript"
    elif path == "/open":
        data, kind = json.dumps(len(OPEN)).encode(), "application/json"
    else:
        if path == "/echo":  # (not elsewhere: on its own origin it wipes its own preview's cookie)
            hostile.append(("Clear-Site-Data", '"*"'))
        seen = {"method": method, "target": target, "headers": headers, "received": size}
        data, kind = json.dumps(seen).encode(), "application/json"
    answer(writer, "200 OK", [*hostile, ("Content-Type", kind), ("Connection", "close")], data)
    await writer.drain()
    writer.close()


async def websocket(reader, writer, path, headers):
    key = dict((k.lower(), v) for k, v in headers)["sec-websocket-key"]
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    version = "HTTP/1.0" if path == "/ws10" else "HTTP/1.1"
    writer.write(f"{version} 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    if path == "/bye":  # closes at once, with a code of its own
        writer.write(bytes([0x88, 2]) + (4001).to_bytes(2, "big"))
        await writer.drain()
        writer.close()
        return
    OPEN.add(writer)
    try:
        while await reader.read(65536):  # a close frame too: ignored, never answered
            pass
    finally:
        OPEN.discard(writer)
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), limit=1 << 16, backlog=512)
    await server.serve_forever()

asyncio.run(main())
'''


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with no preview domain (the default: `*.localhost`), and small limits to reach."""
    env = {
        "WORKSPACE_MAX_PROXIED_BODY": str(LIMIT),
        "WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE": str(PER_WORKSPACE),
        "WORKSPACE_MAX_WEBSOCKETS_PER_CALLER": "1000",
    }
    server = Server(tmp_path_factory.mktemp("hostile-previews"), env=env)
    server.env.pop("WORKSPACE_PREVIEW_DOMAIN", None)
    server.start()
    yield server
    server.stop()


@dataclass
class App:
    client: Client
    id: str
    preview: dict[str, str]  # GET .../ports/{port}/url

    @property
    def token(self) -> str:
        return self.preview["path_url"].rstrip("/").rsplit("/", 1)[1]

    @property
    def host(self) -> str:
        return urlsplit(self.preview["url"]).netloc


def start_app(client: Client, workspace_id: str) -> None:
    client.write_file(workspace_id, "/workspace/hostile.py", HOSTILE_APP.encode())
    client.start_process(workspace_id, ["python3", "/workspace/hostile.py", str(PORT), workspace_id], tag="hostile")
    eventually(lambda: answered(client, workspace_id), timeout=30)


def answered(client: Client, workspace_id: str) -> bool:
    return client._http.get(f"/workspaces/{workspace_id}/ports/{PORT}/open").status_code == 200


@pytest.fixture(scope="module")
def apps(hostile_server: Server) -> Iterator[dict[str, list[App]]]:
    """The hostile app in three workspaces of alice's and one of bob's."""
    made: list[tuple[Client, str]] = []
    found: dict[str, list[App]] = {"alice": [], "bob": []}
    clients = {owner: hostile_server.client(owner) for owner in found}
    try:
        for owner, count in (("alice", 3), ("bob", 1)):
            for _ in range(count):
                workspace = clients[owner].create(provider="gvisor")
                made.append((clients[owner], workspace.id))
                start_app(clients[owner], workspace.id)
                preview = clients[owner]._http.get(f"/workspaces/{workspace.id}/ports/{PORT}/url").json()
                found[owner].append(App(clients[owner], workspace.id, preview))
        yield found
    finally:
        for client, workspace_id in made:
            with contextlib.suppress(APIError):
                client.delete(workspace_id)
        for client in clients.values():
            client.close()


def seen_by_app(answer: httpx.Response) -> dict[str, object]:
    assert answer.status_code == 200, answer.text
    seen: dict[str, object] = answer.json()
    return seen


def in_host_form(
    server: Server, app: App, path: str, method: str = "GET", headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    """A request to the app's own host (by the Host header: Python's resolver does not do `*.localhost`)."""
    sent = {"host": app.host, "cookie": f"agentbox_preview={app.token}", **(headers or {})}
    return httpx.request(method, f"{server.url}{path}", headers=sent, **kwargs)


# Previews on agentbox's own origin


ORIGIN_WIDE = ("set-cookie", "service-worker-allowed", "clear-site-data", "strict-transport-security", "nel")


def test_on_agentboxs_origin_an_apps_answer_is_an_opaque_origin_that_sets_nothing(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    app = apps["alice"][0]
    answers = {
        "path form": httpx.get(app.preview["path_url"] + "echo"),
        "API form": app.client._http.get(f"/workspaces/{app.id}/ports/{PORT}/echo"),
    }
    for form, answer in answers.items():
        assert answer.status_code == 200 and answer.headers["x-served-by"] == "hostile", form
        for name in ORIGIN_WIDE:
            assert name not in answer.headers, (form, name, answer.headers.get(name))
        policy = answer.headers.get_list("content-security-policy")
        assert len(policy) == 1 and policy[0].startswith("sandbox ") and "allow-same-origin" not in policy[0], form
        assert (
            answer.headers["x-content-type-options"] == "nosniff" and answer.headers["referrer-policy"] == "no-referrer"
        )

    # A page of agentbox's origin (the dashboard) cannot take the app's code as its own.
    for refused_headers in (
        {"sec-fetch-site": "same-origin", "sec-fetch-dest": "script"},
        {"sec-fetch-site": "same-origin", "sec-fetch-dest": "serviceworker", "service-worker": "script"},
    ):
        refused = httpx.get(app.preview["path_url"] + "sw.js", headers=refused_headers)
        assert refused.status_code == 403 and "preview URL" in refused.json()["detail"], refused.text
    # Its own sandboxed page's scripts come cross-site, and load.
    assert httpx.get(app.preview["path_url"] + "page.js", headers={"sec-fetch-site": "cross-site"}).status_code == 200


def test_the_app_never_receives_a_token_or_agentboxs_credentials(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    app = apps["alice"][0]
    secrets = {"access": "x-access-token-secret-1", "traffic": "traffic-token-secret-2"}
    sent = {
        "referer": app.preview["path_url"] + "page.html",
        "x-access-token": secrets["access"],
        "e2b-traffic-access-token": secrets["traffic"],
        "cookie": f"agentbox_preview={app.token}",
    }
    seen = [
        seen_by_app(httpx.get(app.preview["path_url"] + f"echo?agentbox_preview={app.token}&keep=1", headers=sent)),
        seen_by_app(in_host_form(hostile_server, app, "/echo?keep=1", headers={**sent, "cookie": sent["cookie"]})),
        seen_by_app(app.client._http.get(f"/workspaces/{app.id}/ports/{PORT}/echo?keep=1", headers=sent)),
    ]
    for what in seen:
        said = json.dumps(what)
        assert app.token not in said and "/preview/" not in said, said
        assert secrets["access"] not in said and secrets["traffic"] not in said, said
        assert KEYS["alice"] not in said, said
        assert str(what["target"]).endswith("keep=1"), said
        names = {name.lower() for name, _ in what["headers"]}  # type: ignore[attr-defined]
        assert not {"x-access-token", "e2b-traffic-access-token", "authorization"} & names, said


def test_one_owners_app_never_gets_another_owners_cookies(hostile_server: Server, apps: dict[str, list[App]]) -> None:
    alices, bobs = apps["alice"][0], apps["bob"][0]
    with httpx.Client() as browser_like:  # one cookie jar for the server's origin, as a browser has
        browser_like.get(alices.preview["path_url"] + "echo")
        browser_like.cookies.set("dashboard_cookie", "ours")  # whatever else that origin's jar holds
        seen = seen_by_app(browser_like.get(bobs.preview["path_url"] + "echo"))
    said = json.dumps(seen)
    assert alices.id not in said and "ours" not in said, said
    assert "cookie" not in {name.lower() for name, _ in seen["headers"]}, said  # type: ignore[attr-defined]


# Previews on their own origins


def test_the_preview_url_is_the_apps_own_localhost_origin_and_its_cookie_is_secure_behind_https(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    app = apps["alice"][0]
    assert urlsplit(app.preview["url"]).hostname == f"{PORT}-{app.id}.localhost"
    assert app.host == f"{PORT}-{app.id}.localhost:{hostile_server.port}"
    first_visit = f"{hostile_server.url}/?agentbox_preview={app.token}"
    plain = httpx.get(first_visit, headers={"host": app.host})
    assert plain.status_code == 307 and "secure" not in plain.headers["set-cookie"].lower()
    # Behind a proxy that speaks https (the loopback address is the one uvicorn trusts by default).
    behind = httpx.get(first_visit, headers={"host": app.host, "x-forwarded-proto": "https"})
    assert behind.status_code == 307 and "secure" in behind.headers["set-cookie"].lower()
    assert behind.headers["location"] == f"https://{app.host}/"
    # On its own origin the app's answer is its own, its cookies bound to its own host.
    own = in_host_form(hostile_server, app, "/echo")
    assert own.status_code == 200 and own.headers["service-worker-allowed"] == "/"
    assert not any("domain=" in c.lower() for c in own.headers.get_list("set-cookie"))


def test_in_a_browser_previews_have_their_own_origins_and_none_can_take_the_dashboards(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    alices, bobs = apps["alice"][0], apps["bob"][0]
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_context().new_page()
            # The path form: its scripts run, in an opaque origin: no service worker, no cookie of the origin.
            page.goto(alices.preview["path_url"] + "page.html")
            page.wait_for_function("document.getElementById('script').textContent === 'script ran'")
            page.wait_for_function("document.getElementById('sw').textContent !== 'trying'")
            assert page.inner_text("#sw").startswith("refused")
            page.goto(f"{hostile_server.url}/ui/")
            assert page.evaluate("navigator.serviceWorker.getRegistrations().then((r) => r.length)") == 0
            assert page.evaluate("document.cookie") == ""

            # The host form, as the server hands it out: Chromium resolves *.localhost itself.
            page.goto(alices.preview["url"])
            page.get_by_role("heading", name="hostile app").wait_for()
            assert urlsplit(page.url).netloc == alices.host and "agentbox_preview" not in page.url
            page.goto(bobs.preview["url"])
            page.get_by_role("heading", name="hostile app").wait_for()
            page.reload()  # now with whatever cookies its host has
            assert alices.id not in page.inner_text("#cookies") and bobs.id in page.inner_text("#cookies")
        finally:
            browser.close()


# Bodies


def test_a_body_over_the_limit_is_refused(hostile_server: Server, apps: dict[str, list[App]]) -> None:
    app = apps["alice"][0]
    # Declared: refused before a byte goes on, in the API form and the host form.
    for head in (
        f"PUT /api/v1/workspaces/{app.id}/ports/{PORT}/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEYS['alice']}\r\n",
        f"PUT /echo HTTP/1.1\r\nHost: {app.host}\r\nCookie: agentbox_preview={app.token}\r\n",
    ):
        said = declared_only(hostile_server, f"{head}Content-Length: {LIMIT + 1}\r\n\r\n")
        assert said.startswith("HTTP/1.1 413") and "WORKSPACE_MAX_PROXIED_BODY" in said, said

    # Chunked: counted as it arrives.
    def chunks() -> Iterator[bytes]:  # one byte past the limit, last
        for _ in range(LIMIT // (1 << 20)):
            yield b"x" * (1 << 20)
        yield b"x"

    counted = in_host_form(hostile_server, app, "/echo", method="POST", content=chunks(), timeout=120)
    assert counted.status_code == 413 and "WORKSPACE_MAX_PROXIED_BODY" in counted.json()["detail"]
    assert seen_by_app(in_host_form(hostile_server, app, "/echo", method="POST", content=b"small"))["received"] == 5


def declared_only(server: Server, head: str) -> str:
    """The answer to a request that announces a body and sends none of it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        received = b""
        while b"}" not in received and (chunk := sock.recv(65536)):  # the head, then the JSON detail
            received += chunk
    return received.decode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_fast_client_is_paced_by_a_slow_app_not_buffered_in_the_server(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    app = apps["alice"][1]
    assert hostile_server.process is not None
    pid = hostile_server.process.pid
    size = 60 << 20
    piece = b"y" * (1 << 20)
    answer: list[httpx.Response] = []

    def push() -> None:
        answer.append(
            app.client._http.put(
                f"/workspaces/{app.id}/ports/{PORT}/slow?wait=10",
                content=iter([piece] * (size // len(piece))),
                headers={"content-length": str(size)},
                timeout=180,
            )
        )

    before = rss_mib(pid)
    pusher = threading.Thread(target=push)
    pusher.start()
    peak = before
    deadline = time.monotonic() + 9  # while the app takes nothing
    while time.monotonic() < deadline:
        peak = max(peak, rss_mib(pid))
        time.sleep(0.1)
    pusher.join(timeout=180)
    assert answer and seen_by_app(answer[0])["received"] == size  # all of it arrived, once the app read it
    print(f"server RSS {before:.1f} MiB, at most {peak:.1f} MiB while {size >> 20} MiB were pushed at a slow app")
    assert peak - before < 16, f"the server took {peak - before:.1f} MiB of the body in"


# WebSockets


def open_sockets(server: Server, app: App, count: int, held: contextlib.ExitStack) -> None:
    """`count` WebSockets onto the app (API form, alice's key), closed when `held` closes."""
    url = server.url.replace("http", "ws", 1) + f"/api/v1/workspaces/{app.id}/ports/{PORT}/ws"
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    for opened in range(count):
        try:
            # The client leaves at once on closing: the app never answers the close (agentbox cuts it).
            held.enter_context(connect(url, additional_headers=auth, open_timeout=60, close_timeout=0.1))
        except InvalidStatus as exc:
            exc.add_note(f"after {opened}: {exc.response.body!r}")
            raise


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_on_app(app: App) -> int:
    return int(app.client._http.get(f"/workspaces/{app.id}/ports/{PORT}/open").json())


def test_idle_websockets_hold_no_thread_and_close_when_the_client_goes(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    assert hostile_server.process is not None
    pid = hostile_server.process.pid
    owner = apps["alice"][0]
    threads_before = threads_of(pid)

    def get_latency() -> float:
        started = time.perf_counter()
        assert owner.client._http.get(f"/workspaces/{owner.id}").status_code == 200
        return time.perf_counter() - started

    baseline = statistics.median(get_latency() for _ in range(10))
    with contextlib.ExitStack() as held:
        for app in apps["alice"]:  # 300 in all, PER_WORKSPACE in each
            open_sockets(hostile_server, app, PER_WORKSPACE, held)
        assert all(open_on_app(app) == PER_WORKSPACE for app in apps["alice"])
        threads_open = threads_of(pid)
        loaded = statistics.median(get_latency() for _ in range(10))
        print(f"threads {threads_before} -> {threads_open} with 300 WebSockets; GET {baseline:.4f} s -> {loaded:.4f} s")
        assert threads_open - threads_before < 40, "the relays hold threads"
        assert loaded < max(0.5, 5 * baseline)
    # The app ignores every close: agentbox cuts its connections a few seconds after the clients left.
    eventually(lambda: all(open_on_app(app) == 0 for app in apps["alice"]), timeout=20)
    eventually(lambda: threads_of(pid) - threads_before < 20, timeout=20)


def test_a_websocket_past_the_workspaces_cap_is_refused(hostile_server: Server, apps: dict[str, list[App]]) -> None:
    app = apps["alice"][2]
    with contextlib.ExitStack() as held:
        open_sockets(hostile_server, app, PER_WORKSPACE, held)
        with pytest.raises(InvalidStatus) as refused:
            open_sockets(hostile_server, app, 1, held)
        assert refused.value.response.status_code == 429
        assert b"WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE" in refused.value.response.body
        open_sockets(hostile_server, apps["alice"][1], 1, held)  # another workspace: a count of its own
    eventually(lambda: open_on_app(app) == 0, timeout=20)
    eventually(lambda: opens(hostile_server, app), timeout=10)  # places are given back


def opens(server: Server, app: App) -> bool:
    try:
        with contextlib.ExitStack() as held:
            open_sockets(server, app, 1, held)
    except InvalidStatus:
        return False
    return True


def test_an_http10_answer_to_an_upgrade_is_a_502(hostile_server: Server, apps: dict[str, list[App]]) -> None:
    app = apps["alice"][0]
    url = hostile_server.url.replace("http", "ws", 1) + f"/api/v1/workspaces/{app.id}/ports/{PORT}/ws10"
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}, open_timeout=20).close()
    assert refused.value.response.status_code == 502 and b"HTTP/1.1" in refused.value.response.body
    assert time.monotonic() - started < 10


def test_when_the_app_closes_a_websocket_the_client_hears_it(
    hostile_server: Server, apps: dict[str, list[App]]
) -> None:
    app = apps["alice"][0]
    url = hostile_server.url.replace("http", "ws", 1) + f"/api/v1/workspaces/{app.id}/ports/{PORT}/bye"
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    with connect(url, additional_headers=auth) as sock, pytest.raises(ConnectionClosed) as closed:
        sock.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


def test_the_server_stops_promptly_with_websockets_open(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    workspace_id = ""
    try:
        with server.client("alice") as alice:
            workspace_id = alice.create(provider="gvisor").id
            start_app(alice, workspace_id)
            app = App(alice, workspace_id, {})
            with contextlib.ExitStack() as held:
                open_sockets(server, app, 20, held)
                assert server.process is not None
                started = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                server.process.wait(timeout=30)
                took = time.monotonic() - started
            print(f"stopped in {took:.1f} s with 20 WebSockets open onto an app that ignores closes")
            assert took < 15
    finally:
        server.stop()
        if workspace_id:  # a second start, to remove what the first one made
            server.start()
            with server.client("alice") as alice, contextlib.suppress(APIError):
                alice.delete(workspace_id)
            server.stop()
