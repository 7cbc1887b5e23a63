"""What idle proxied WebSockets cost the API: an owner's `GET /workspaces/{id}` with none open, and with
`count` open onto servers in real workspaces (each a socket, never a thread; see web/proxy.py).

    idle_websockets(api, root, count=300)   # api: httpx.Client on {root}/api/v1 with a bearer key

(Not named websockets.py: `python bench/run.py` puts bench/ first on sys.path, where that name would
hide the `websockets` package from run.py and from this module.)

The sockets go through the API form (`/api/v1/workspaces/{id}/ports/{port}/...`), spread over as
many workspaces as the server's per-workspace cap asks (WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE:
a WebSocket past it is refused with a 429, and the next ones go to a new workspace).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

PORT = 8765
ROUNDS = 30
#: A WebSocket server that accepts and then only waits (stdlib: the workspace image has no packages).
IDLE_SERVER = r"""
import asyncio, base64, hashlib, sys
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

async def serve(reader, writer):
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
    key = {k.lower(): v for k, v in fields.items()}.get("sec-websocket-key")
    if key is None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    else:
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        while await reader.read(65536):
            pass
    writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=512)
    await server.serve_forever()

asyncio.run(main())
"""


def idle_websockets(api: httpx.Client, root: str, count: int = 300) -> dict[str, list[float]]:
    """Latency samples (ms) of GET /workspaces/{id} with no proxied WebSocket open, and with `count` open."""
    print(f"==> GET /workspaces/{{id}} with 0 and {count} idle proxied WebSockets", flush=True)
    with _workspaces(api) as new_workspace:
        first = new_workspace()
        samples = {"get_workspace_no_websockets": _gets(api, first)}
        with ExitStack() as sockets:
            workspace_id, opened = first, 0
            while opened < count:
                socket = _open(root, api, workspace_id)
                if socket is None:  # the workspace's cap: the next ones go to another
                    workspace_id = new_workspace()
                    continue
                sockets.callback(socket.close)
                opened += 1
            samples[f"get_workspace_{count}_websockets"] = _gets(api, first)
    return samples


@contextmanager
def _workspaces(api: httpx.Client) -> Iterator[Callable[[], str]]:
    """A maker of workspaces running IDLE_SERVER; every one is deleted afterwards."""
    made: list[str] = []

    def new_workspace() -> str:
        workspace_id = str(api.post("/workspaces", json={}).raise_for_status().json()["id"])
        made.append(workspace_id)
        api.put(
            f"/workspaces/{workspace_id}/files", params={"path": "/tmp/idle.py"}, content=IDLE_SERVER.encode()
        ).raise_for_status()
        process = {"command": ["python3", "/tmp/idle.py", str(PORT)], "tag": "idle-websockets"}
        api.post(f"/workspaces/{workspace_id}/processes", json=process).raise_for_status()
        deadline = time.monotonic() + 30
        while api.get(f"/workspaces/{workspace_id}/ports/{PORT}/").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the idle WebSocket server did not start in {workspace_id}")
            time.sleep(0.2)
        return workspace_id

    try:
        yield new_workspace
    finally:
        for workspace_id in made:
            api.delete(f"/workspaces/{workspace_id}")


def _open(root: str, api: httpx.Client, workspace_id: str) -> ClientConnection | None:
    url = f"{root.replace('http', 'ws', 1)}/api/v1/workspaces/{workspace_id}/ports/{PORT}/idle"
    headers = {"Authorization": str(api.headers["authorization"])}
    try:
        return connect(url, additional_headers=headers, open_timeout=60, close_timeout=2)
    except InvalidStatus as exc:
        if exc.response.status_code == 429:
            return None
        raise


def _gets(api: httpx.Client, workspace_id: str) -> list[float]:
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        api.get(f"/workspaces/{workspace_id}").raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    print(f"    p50 {statistics.median(samples):.1f} ms", flush=True)
    return samples
