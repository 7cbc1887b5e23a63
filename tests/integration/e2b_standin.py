"""A local stand-in for E2B: its REST API and its in-sandbox daemon (envd), backed by real workspaces.

E2B's cloud cannot be reached from here. This serves, on one loopback port, what the official
SDK calls (docs/e2b-wire-protocol.md): the sandbox API (`/v2/sandboxes`, `/sandboxes/{id}`...)
and envd (Connect RPC with JSON for processes and the filesystem, plain HTTP for `/files`),
found by the `E2b-Sandbox-Id` header the SDK sends. The SDK is pointed at it with its own
`E2B_API_URL` and `E2B_SANDBOX_URL`. Each sandbox is a real gVisor workspace made by
agentbox's Docker provider (under its own instance label), so commands really run.

Envd's server side reuses the SDK's own generated Connect classes.

Access as E2B grants it: envd answers only requests carrying the sandbox's envd access token
(`X-Access-Token`, which the SDK sends), and a sandbox's other ports (E2B's proxy, reached by the
`E2b-Sandbox-Port` header) answer anyone if the sandbox was made with public traffic (E2B's
default), else only requests carrying its traffic token (`E2b-Traffic-Access-Token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import posixpath
import secrets
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import h11
import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_connect
from e2b.envd.filesystem import filesystem_pb as F
from e2b.envd.process import process_connect
from e2b.envd.process import process_pb as P
from protobuf import Oneof
from protobuf.wkt import Timestamp
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from agentbox.errors import AgentboxError, FileError
from agentbox.providers.base import WorkspaceSpec
from agentbox.providers.docker import DockerProvider, install_helper
from agentbox.providers.docker.disks import Disks
from agentbox.sandbox.channel import NO_LIMIT, Invocation
from agentbox.sandbox.runtime import DirEntry, ExecRequest, FileStat, WatchEvent

from .conftest import free_port

KILLED = -1  # envd's exit code for a process ended by a signal
ENVD_PORT = 49983
ENVD_VERSION = "0.5.7"  # new enough for streamed (octet-stream) uploads
DEFAULT_IMAGE = "agentbox/workspace:bookworm"


@dataclass
class Sandbox:
    id: str
    template: str
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime
    state: str = "running"
    public_traffic: bool = True  # E2B's default when `allowPublicTraffic` is not sent
    envd_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    traffic_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def created(self) -> dict[str, Any]:
        return {
            "sandboxID": self.id,
            "templateID": self.template,
            "clientID": "standin",
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.envd_token,
            "trafficAccessToken": None if self.public_traffic else self.traffic_token,
        }

    def listed(self) -> dict[str, Any]:
        return {
            **self.created(),
            "startedAt": self.started_at.isoformat(),
            "endAt": self.end_at.isoformat(),
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 1024,
            "state": self.state,
            "metadata": self.metadata,
        }


#: Request headers passed on to a sandbox's port (nothing of E2B's own, no tokens).
_PASSED = frozenset({"accept", "content-type", "user-agent", "cookie"})

_EVENT_TYPES = {
    "create": F.EventType.CREATE,
    "write": F.EventType.WRITE,
    "remove": F.EventType.REMOVE,
    "rename": F.EventType.RENAME,
    "chmod": F.EventType.CHMOD,
}


@dataclass
class Watcher:
    """An envd watcher: events kept until the SDK asks for them (GetWatcherEvents), as envd does."""

    path: str
    source: Iterator[WatchEvent | None]
    stopped: threading.Event = field(default_factory=threading.Event)
    _events: list[F.FilesystemEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        try:
            for event in self.source:  # a None every 2 s at most: the chance to stop
                if self.stopped.is_set():
                    return
                if event is not None:
                    name = posixpath.relpath(event.path, self.path)
                    with self._lock:
                        self._events.append(F.FilesystemEvent(name=name, type=_EVENT_TYPES[event.type]))
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()

    def take(self) -> list[F.FilesystemEvent]:
        with self._lock:
            taken, self._events = self._events, []
        return taken


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def _connect_error(exc: AgentboxError) -> ConnectError:
    if isinstance(exc, FileError) and exc.errno_name in ("ENOENT", "ENOTDIR"):
        return ConnectError(Code.NOT_FOUND, exc.detail)
    return ConnectError(Code.INVALID_ARGUMENT if exc.status_code == 400 else Code.INTERNAL, exc.detail)


@dataclass
class E2BStandIn:
    data_dir: Path
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: "e2b_" + secrets.token_hex(16))
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    watchers: dict[str, Watcher] = field(default_factory=dict)
    processes: dict[int, Any] = field(default_factory=dict)  # envd's PID -> the helper call running it
    _pids: Iterator[int] = field(default_factory=lambda: itertools.count(100))
    _server: uvicorn.Server | None = None
    _app: Any = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.client = docker.from_env(timeout=120)
        self.provider = DockerProvider(
            self.client,
            name="e2b-standin",
            oci_runtime="runsc",
            user="1000:1000",
            isolation="gVisor",
            disks=Disks(self.data_dir / "disks", "1000:1000"),
            helper=install_helper(self.data_dir / "bin"),
            instance="e2b-standin",
            control_root=self.data_dir / "run",  # as envd would: a channel that ends what the client leaves
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ref(self, sandbox_id: str) -> str:
        return f"agentbox-{sandbox_id}"

    # The REST API

    async def api(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "Invalid API key")
        path, method = request.url.path, request.method
        if path == "/v2/sandboxes" and method == "POST":
            return await self._create(await request.json())
        if path == "/v2/sandboxes" and method == "GET":
            return self._list(request.query_params.get("metadata", ""), request.query_params.get("state", ""))
        parts = path.strip("/").split("/")
        sandbox_id = parts[2] if parts[0] == "v2" else parts[1]
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            return _error(404, f"sandbox {sandbox_id} not found")
        action = parts[-1] if parts[-1] != sandbox_id else ""
        if method == "GET" and not action:
            return JSONResponse(sandbox.listed())
        if method == "DELETE" and not action:
            await asyncio.to_thread(self.provider.destroy, self._ref(sandbox_id))
            del self.sandboxes[sandbox_id]
            return Response(status_code=204)
        if action == "timeout":
            timeout = (await request.json())["timeout"]
            sandbox.end_at = datetime.now(UTC) + timedelta(seconds=timeout)
            return Response(status_code=204)
        if action == "pause":
            await asyncio.to_thread(self.provider.stop, self._ref(sandbox_id))
            sandbox.state = "paused"
            return Response(status_code=204)
        if action == "connect":
            if sandbox.state == "paused":
                await asyncio.to_thread(self.provider.start, self._ref(sandbox_id))
                sandbox.state = "running"
            return JSONResponse(sandbox.created(), status_code=201)
        return _error(404, f"no such call: {method} {path}")

    async def _create(self, body: dict[str, Any]) -> Response:
        template = body.get("templateID") or "base"
        sandbox_id = "isb" + secrets.token_hex(8)
        image = DEFAULT_IMAGE if template == "base" else template
        # allow_internet_access=false: E2B denies all egress; here, a sandbox with no network at all.
        network = "egress" if body.get("allow_internet_access", True) else "none"
        spec = WorkspaceSpec(
            id=sandbox_id, image=image, cpu=1, memory=512 << 20, disk=1 << 30, pids_limit=256, network=network
        )
        try:
            await asyncio.to_thread(self.provider.create, spec)
        except AgentboxError as exc:
            return _error(400 if exc.status_code == 400 else 500, f"template {template!r}: {exc.detail}")
        now = datetime.now(UTC)
        sandbox = Sandbox(
            sandbox_id,
            template,
            dict(body.get("metadata") or {}),
            now,
            now + timedelta(seconds=body.get("timeout", 300)),
            public_traffic=bool((body.get("network") or {}).get("allowPublicTraffic", True)),
        )
        self.sandboxes[sandbox_id] = sandbox
        return JSONResponse(sandbox.created(), status_code=201)

    def _list(self, metadata: str, states: str) -> Response:
        wanted = {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in urllib.parse.parse_qsl(metadata)}
        chosen = [
            s.listed()
            for s in self.sandboxes.values()
            if all(s.metadata.get(k) == v for k, v in wanted.items()) and (not states or s.state in states.split(","))
        ]
        return JSONResponse(chosen)

    # A sandbox's other ports, through E2B's proxy

    async def port_traffic(self, request: Request, sandbox: Sandbox, port: int) -> Response:
        """Refused without the traffic token unless the sandbox is public (E2B's 403); else relayed
        to the port inside (one request per connection, answered whole: enough for tests)."""
        if not sandbox.public_traffic and request.headers.get("e2b-traffic-access-token") != sandbox.traffic_token:
            return _error(403, "the sandbox is not public: send its traffic access token (E2b-Traffic-Access-Token)")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        head = [f"{request.method} {target} HTTP/1.1", f"Host: localhost:{port}", "Connection: close"]
        body = await request.body()
        head += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() in _PASSED]
        raw = ("\r\n".join(head) + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        try:
            answer = await asyncio.to_thread(self._exchange, self._ref(sandbox.id), port, request.method, raw)
        except AgentboxError as exc:
            return _error(502, f"port {port}: {exc.detail}")
        return answer

    def _exchange(self, ref: str, port: int, method: str, raw: bytes) -> Response:
        tunnel = self.provider.runtime(ref).connect(port)
        try:
            tunnel.write(raw)
            tunnel.end_input()
            client = h11.Connection(h11.CLIENT)
            # The client's side of what was sent, so that h11 reads the answer to it.
            client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
            status, headers, content = 502, [], bytearray()
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(tunnel.read())
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [(k.decode(), v.decode()) for k, v in event.headers if k.lower() != b"content-length"]
                elif isinstance(event, h11.Data):
                    content += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        finally:
            tunnel.close()
        response = Response(bytes(content), status_code=status)
        for name, value in headers:
            response.headers.append(name, value)
        return response

    # envd: /files and /health

    async def files(self, request: Request) -> Response:
        ref = self._ref(request.headers.get("e2b-sandbox-id", ""))
        path = request.query_params.get("path", "")
        try:
            if request.method == "GET":
                _, chunks = await asyncio.to_thread(self.provider.runtime(ref).read_file, path)
                return StreamingResponse(_in_thread(chunks), media_type="application/octet-stream")
            body = await request.body()
            await asyncio.to_thread(self.provider.runtime(ref).write_file, path, [body], len(body), 0o644)
        except FileError as exc:  # as envd answers
            status = {"ENOENT": 404, "EACCES": 403, "EPERM": 403, "ENOSPC": 507}.get(exc.errno_name, 400)
            return _error(status, f"{exc.detail}: permission denied" if status == 403 else exc.detail)
        return JSONResponse([{"name": Path(path).name, "type": "file", "path": path}])

    # Running

    def start(self) -> E2BStandIn:
        standin = self

        class Process(process_connect.Process):
            """Each envd process is a `run` of agentbox's helper in the backing workspace."""

            async def start(self, request: P.StartRequest, ctx: Any) -> AsyncIterator[P.StartResponse]:
                ref = standin._ref(ctx.request_headers.get("e2b-sandbox-id", ""))
                config = request.process
                seconds = ctx.timeout_ms / 1000 if ctx.timeout_ms else None  # envd ends it at the SDK's deadline
                argv = ["run", "-m", str(NO_LIMIT), *(["-t", str(seconds)] if seconds else [])]
                invocation = Invocation(
                    [*argv, *(["-i"] if request.stdin else []), "--", config.cmd, *config.args],
                    stdin=request.stdin,
                    cwd=config.cwd or "/workspace",
                    env=dict(config.envs),
                )
                try:
                    call = await asyncio.to_thread(standin.provider.runtime(ref).transport.call, invocation)
                except AgentboxError as exc:
                    raise _connect_error(exc) from None
                pid = next(standin._pids)
                standin.processes[pid] = call
                events: asyncio.Queue[Any] = asyncio.Queue()
                loop = asyncio.get_running_loop()

                def pump() -> None:
                    try:
                        for stream, data in call.frames():
                            loop.call_soon_threadsafe(events.put_nowait, (stream, data))
                        loop.call_soon_threadsafe(events.put_nowait, call.exit_code())
                    except (AgentboxError, TimeoutError) as exc:
                        loop.call_soon_threadsafe(events.put_nowait, exc)
                    except OSError:  # killed (SendSignal closed the call), as envd says it
                        loop.call_soon_threadsafe(events.put_nowait, KILLED)

                threading.Thread(target=pump, daemon=True).start()
                try:
                    yield _event("start", P.ProcessEvent.StartEvent(pid=pid))
                    while True:
                        event = await events.get()
                        if isinstance(event, int):
                            status = "signal: killed" if event == KILLED else f"exit status {event}"
                            end = P.ProcessEvent.EndEvent(exit_code=event, exited=event != KILLED, status=status)
                            yield _event("end", end)
                            return
                        if isinstance(event, AgentboxError):
                            raise _connect_error(event)
                        if isinstance(event, TimeoutError):
                            raise ConnectError(Code.DEADLINE_EXCEEDED, "the process passed its deadline")
                        stream, data = event
                        output = Oneof("stdout" if stream == 1 else "stderr", data)
                        yield _event("data", P.ProcessEvent.DataEvent(output=output))
                finally:
                    standin.processes.pop(pid, None)
                    await asyncio.to_thread(call.close)

            def _process(self, selector: P.ProcessSelector) -> Any:
                call = standin.processes.get(selector.selector.value if selector.selector else -1)
                if call is None:
                    raise ConnectError(Code.NOT_FOUND, "process not found")
                return call

            async def send_input(self, request: P.SendInputRequest, ctx: Any) -> P.SendInputResponse:
                call = self._process(request.process)
                await asyncio.to_thread(call.write, request.input.input.value)
                return P.SendInputResponse()

            async def close_stdin(self, request: P.CloseStdinRequest, ctx: Any) -> P.CloseStdinResponse:
                await asyncio.to_thread(self._process(request.process).end_input)
                return P.CloseStdinResponse()

            async def send_signal(self, request: P.SendSignalRequest, ctx: Any) -> P.SendSignalResponse:
                # SIGKILL or SIGTERM: the helper ends the command's group when its call closes.
                await asyncio.to_thread(self._process(request.process).close)
                return P.SendSignalResponse()

        async def stat(ctx: Any, path: str) -> FileStat | list[DirEntry]:
            ref = standin._ref(ctx.request_headers.get("e2b-sandbox-id", ""))
            try:
                return await asyncio.to_thread(standin.provider.runtime(ref).stat, path)
            except AgentboxError as exc:
                raise _connect_error(exc) from None

        class Filesystem(filesystem_connect.Filesystem):
            async def stat(self, request: F.StatRequest, ctx: Any) -> F.StatResponse:
                found = await stat(ctx, request.path)
                if isinstance(found, list):
                    return F.StatResponse(entry=_entry(request.path, "dir", 4096, 0o755, 0))
                return F.StatResponse(entry=_entry(request.path, "file", found.size, found.mode, 0))

            async def list_dir(self, request: F.ListDirRequest, ctx: Any) -> F.ListDirResponse:
                found = await stat(ctx, request.path)
                entries: list[DirEntry] = found if isinstance(found, list) else []
                return F.ListDirResponse(
                    entries=[
                        _entry(f"{request.path.rstrip('/')}/{e.name}", e.type, e.size, e.mode, e.mtime) for e in entries
                    ]
                )

            async def create_watcher(self, request: F.CreateWatcherRequest, ctx: Any) -> F.CreateWatcherResponse:
                ref = standin._ref(ctx.request_headers.get("e2b-sandbox-id", ""))
                try:
                    events = await asyncio.to_thread(
                        standin.provider.runtime(ref).watch, request.path, request.recursive
                    )
                except AgentboxError as exc:
                    raise _connect_error(exc) from None
                watcher = Watcher(request.path, events)
                threading.Thread(target=watcher.run, daemon=True).start()
                watcher_id = secrets.token_hex(8)
                standin.watchers[watcher_id] = watcher
                return F.CreateWatcherResponse(watcher_id=watcher_id)

            async def get_watcher_events(
                self, request: F.GetWatcherEventsRequest, ctx: Any
            ) -> F.GetWatcherEventsResponse:
                watcher = standin.watchers.get(request.watcher_id)
                if watcher is None:
                    raise ConnectError(Code.NOT_FOUND, f"watcher {request.watcher_id} not found")
                return F.GetWatcherEventsResponse(events=watcher.take())

            async def remove_watcher(self, request: F.RemoveWatcherRequest, ctx: Any) -> F.RemoveWatcherResponse:
                watcher = standin.watchers.pop(request.watcher_id, None)
                if watcher is not None:
                    watcher.stopped.set()
                return F.RemoveWatcherResponse()

            async def remove(self, request: F.RemoveRequest, ctx: Any) -> F.RemoveResponse:
                ref = standin._ref(ctx.request_headers.get("e2b-sandbox-id", ""))
                argv = ["rm", "-rf", request.path]
                await asyncio.to_thread(standin.provider.runtime(ref).exec, ExecRequest(argv=argv))
                return F.RemoveResponse()

        process_app = process_connect.ProcessASGIApplication(Process())
        filesystem_app = filesystem_connect.FilesystemASGIApplication(Filesystem())

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            path = scope["path"]
            headers = Headers(scope=scope)
            sandbox = self.sandboxes.get(headers.get("e2b-sandbox-id", ""))
            port = headers.get("e2b-sandbox-port", str(ENVD_PORT))
            if sandbox is not None and port != str(ENVD_PORT):
                traffic = await self.port_traffic(Request(scope, receive), sandbox, int(port))
                await traffic(scope, receive, send)
                return
            if sandbox is not None and path != "/health" and headers.get("x-access-token") != sandbox.envd_token:
                # envd's own answer to a request without the sandbox's access token.
                refused = _error(401, "unauthorized access, please provide a valid access token or method signing")
                await refused(scope, receive, send)
                return
            if path.startswith(process_app.path + "/"):
                await process_app(scope, receive, send)
                return
            if path.startswith(filesystem_app.path + "/"):
                await filesystem_app(scope, receive, send)
                return
            request = Request(scope, receive)
            if path == "/health":
                response: Response = Response(status_code=204)
            elif path == "/files":
                response = await self.files(request)
            else:
                response = await self.api(request)
            await response(scope, receive, send)

        self._app = app
        self.resume_service()
        return self

    def resume_service(self) -> None:
        """(Re)open the port: E2B is reachable."""
        self._server = uvicorn.Server(uvicorn.Config(self._app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "the E2B stand-in did not start"
            time.sleep(0.05)

    def pause_service(self) -> None:
        """Close the port: E2B cannot be reached (its sandboxes live on)."""
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = None

    def stop(self) -> None:
        """End E2B: its port first (no request under way after it), then every sandbox it made, known or not.

        A create or delete cut short leaves a sandbox out of `sandboxes` (a removal the engine answered late
        goes on in the background); E2B's cloud would end it at its timeout, the stand-in ends it now.
        """
        for watcher in self.watchers.values():
            watcher.stopped.set()
        self.pause_service()
        deadline = time.monotonic() + 120
        while (left := self.provider.inventory()) and time.monotonic() < deadline:
            for ref, _ in left.values():
                with contextlib.suppress(AgentboxError):  # one under way in the background: the next round
                    self.provider.destroy(ref)
            time.sleep(0.5)
        self.sandboxes.clear()
        self.provider.close()
        self.client.close()


def _event(kind: str, value: Any) -> P.StartResponse:
    return P.StartResponse(event=P.ProcessEvent(event=Oneof(kind, value)))


def _entry(path: str, kind: str, size: int, mode: int, mtime: int) -> F.EntryInfo:
    file_type = {"dir": F.FileType.DIRECTORY, "symlink": F.FileType.SYMLINK}.get(kind, F.FileType.FILE)
    return F.EntryInfo(
        name=Path(path).name,
        type=file_type,
        path=path,
        size=size,
        mode=mode & 0o7777,
        permissions="",
        owner="user",
        group="user",
        modified_time=Timestamp.from_datetime(datetime.fromtimestamp(mtime, UTC)),
    )


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            return
        yield chunk
