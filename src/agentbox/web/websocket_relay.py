"""WebSockets relayed onto a server inside a workspace, message by message, on the event loop.

The client's socket and the workspace's server (websockets' sans-I/O protocol over an
`AsyncPort`, sandbox/async_tunnel.py) are relayed until either side leaves; the other is then
closed (a server that ignores the close is cut CLOSE_SECONDS later). An open relay costs sockets,
not a thread. Relays are capped per workspace and per caller (`Relays`). What reaches the
workspace's server is decided by web/proxy.py's header policy, as for HTTP.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence

import anyio
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.responses import Response
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.uri import parse_uri

from agentbox.errors import AgentboxError, ProviderError
from agentbox.sandbox.async_tunnel import AsyncPort
from agentbox.web.proxy import (
    ANSWER_SECONDS,
    Connect,
    GatewayTimeout,
    close_port,
    forwarded_headers,
    open_port,
    send_to,
)

#: Seconds a WebSocket's server has to close once the client has left, before its connection is cut.
CLOSE_SECONDS = 3.0

#: Bytes of one WebSocket message relayed at most, either way.
MAX_MESSAGE = 16 << 20


class TooManyRelays(AgentboxError):
    status_code = 429


class Relays:
    """The WebSockets relayed at once, per workspace and per caller; a new one past either cap is refused."""

    def __init__(self, per_workspace: int, per_caller: int) -> None:
        self.per_workspace = per_workspace
        self.per_caller = per_caller
        self._workspaces: Counter[str] = Counter()
        self._callers: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, workspace_id: str, caller: str) -> Iterator[None]:
        """One relay's place (TooManyRelays when there is none), for as long as the block runs."""
        if self._workspaces[workspace_id] >= self.per_workspace:
            raise TooManyRelays(
                f"workspace {workspace_id} has {self.per_workspace} WebSockets open through agentbox, the most it may "
                "have (WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE): close one first"
            )
        if self._callers[caller] >= self.per_caller:
            raise TooManyRelays(
                f"you have {self.per_caller} WebSockets open through agentbox, the most one caller may have "
                "(WORKSPACE_MAX_WEBSOCKETS_PER_CALLER): close one first"
            )
        self._workspaces[workspace_id] += 1
        self._callers[caller] += 1
        try:
            yield
        finally:
            for counts, key in ((self._workspaces, workspace_id), (self._callers, caller)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


def relays_of(app: FastAPI) -> Relays:
    """The app's relay counts (one event loop: no lock needed)."""
    relays: Relays | None = getattr(app.state, "websocket_relays", None)
    if relays is None:
        settings = app.state.service.settings
        relays = Relays(settings.max_websockets_per_workspace, settings.max_websockets_per_caller)
        app.state.websocket_relays = relays
    return relays


def caller_of(connection: HTTPConnection, owner: str | None = None) -> str:
    """Whom a relay counts against: the API key's owner, else the client's address (a preview's visitor)."""
    if owner is not None:
        return f"owner {owner}"
    return f"address {connection.client.host if connection.client else '?'}"


async def proxy_websocket(
    websocket: WebSocket, connect: Connect, target: str, port: int, workspace_id: str, caller: str
) -> None:
    """Relay `websocket` to a WebSocket server on `port` at `target`, message by message, until either
    side leaves. The client's socket is refused (with the error's status) when the server's is, and
    with a 429 past the caps."""
    try:
        with relays_of(websocket.app).hold(workspace_id, caller):
            await _relay(websocket, connect, target, port)
    except TooManyRelays as exc:
        await websocket.send_denial_response(_error(exc))


async def _relay(websocket: WebSocket, connect: Connect, target: str, port: int) -> None:
    try:
        connection, host = await open_port(connect)
    except AgentboxError as exc:
        await websocket.send_denial_response(_error(exc))
        return
    try:
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        headers = [
            (n, v) for n, v in forwarded_headers(websocket, host, "") if not n.lower().startswith(b"sec-websocket-")
        ]
        try:
            upstream = await _Upstream.open(connection, port, target, offered, headers)
        except AgentboxError as exc:
            await websocket.send_denial_response(_error(exc))
            return
        await websocket.accept(subprotocol=upstream.subprotocol)
        await upstream.relay(websocket)
    finally:
        await close_port(connection)


def _error(exc: AgentboxError) -> Response:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


class _Upstream:
    """The WebSocket client side, towards the workspace's server (websockets' sans-I/O protocol)."""

    def __init__(self, connection: AsyncPort, protocol: ClientProtocol, answer: HandshakeResponse) -> None:
        self.connection = connection
        self.protocol = protocol
        self.subprotocol = answer.headers.get("Sec-WebSocket-Protocol")
        #: What the client's socket is closed with: the server's own code, or 1014 (bad gateway) when
        #: the server's connection ended without one.
        self.close_code = 1014
        self.closed = anyio.Event()  # the server's side has ended
        self._flushing = anyio.Lock()  # what the protocol has to send leaves in its order
        self._pending: Sequence[object] = ()  # frames that came with the handshake's answer

    @classmethod
    async def open(
        cls,
        connection: AsyncPort,
        port: int,
        target: str,
        subprotocols: list[str],
        headers: list[tuple[bytes, bytes]],
    ) -> _Upstream:
        """The handshake: ProviderError (502) when the server refuses or does not answer in HTTP/1.1,
        GatewayTimeout (504) when it does not answer within ANSWER_SECONDS."""
        protocol = ClientProtocol(
            parse_uri(f"ws://localhost:{port}{target}"),
            subprotocols=subprotocols or None,  # type: ignore[arg-type]
            max_size=MAX_MESSAGE,
        )
        request = protocol.connect()
        for name, value in headers:
            if name.lower() == b"host":  # the workspace's own (`request_host`), not the URI's
                del request.headers["Host"]
            request.headers[name.decode("latin-1")] = value.decode("latin-1")
        protocol.send_request(request)
        with anyio.move_on_after(ANSWER_SECONDS):
            for data in protocol.data_to_send():
                await send_to(connection, data)
            while True:
                data = await connection.read()
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                events = protocol.events_received()
                for position, event in enumerate(events):
                    if not isinstance(event, HandshakeResponse):
                        continue
                    if protocol.handshake_exc is not None:
                        raise ProviderError(
                            f"the workspace's server refused the WebSocket (HTTP {event.status_code}): "
                            f"{protocol.handshake_exc}"
                        )
                    upstream = cls(connection, protocol, event)
                    upstream._pending = events[position + 1 :]
                    return upstream
                if protocol.handshake_exc is not None:  # not an HTTP/1.1 answer at all
                    why = protocol.handshake_exc.__cause__ or protocol.handshake_exc
                    raise ProviderError(
                        f"the workspace's server did not answer the WebSocket's upgrade in HTTP/1.1 ({why}): "
                        "is a WebSocket server listening on that port?"
                    )
                if not data:
                    raise ProviderError("the workspace's server closed the connection during the WebSocket handshake")
        raise GatewayTimeout(
            f"the workspace's server did not answer the WebSocket's upgrade within {ANSWER_SECONDS:g} s"
        )

    async def relay(self, websocket: WebSocket) -> None:
        """Both directions until either side leaves; then the other is closed."""
        async with anyio.create_task_group() as tasks:

            async def from_server() -> None:
                try:
                    await self._to_client(websocket)
                finally:
                    self.closed.set()
                    tasks.cancel_scope.cancel()

            tasks.start_soon(from_server)
            await self._from_client(websocket)
            # The client has gone and the server was asked to close: it has a moment to do so.
            with anyio.move_on_after(CLOSE_SECONDS):
                await self.closed.wait()
            tasks.cancel_scope.cancel()
        with contextlib.suppress(Exception):  # the client may have gone already: nothing left to tell it
            await websocket.close(code=self.close_code)

    async def _from_client(self, websocket: WebSocket) -> None:
        """The client's messages to the server, each sent before the next is taken (the server paces the client)."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1000)
                with contextlib.suppress(Exception):  # already closing
                    self.protocol.send_close(code if 1000 <= code < 5000 and code not in (1005, 1006) else 1000)
                await self._flush()
                return
            if message.get("bytes") is not None:
                self.protocol.send_binary(message["bytes"])
            elif message.get("text") is not None:
                self.protocol.send_text(message["text"].encode())
            else:
                continue
            if not await self._flush():
                return  # the server's side is gone: from_server sees its end

    async def _to_client(self, websocket: WebSocket) -> None:
        """The server's messages to the client until it closes (or the client has gone)."""
        parts: list[bytes] = []
        opcode = Opcode.TEXT
        events: Sequence[object] = self._pending
        while True:
            for frame in events:
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode == Opcode.CLOSE:
                    # (close_rcvd, not close_code: the latter waits for the TCP connection's end)
                    code = self.protocol.close_rcvd.code if self.protocol.close_rcvd is not None else None
                    self.close_code = code if code is not None and code not in (1005, 1006, 1015) else 1000
                    await self._flush()  # the answer to its close
                    return
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    opcode, parts = frame.opcode, [bytes(frame.data)]
                elif frame.opcode == Opcode.CONT:
                    parts.append(bytes(frame.data))
                else:
                    continue  # ping and pong: the protocol answers pings itself
                if frame.fin and not await _deliver(websocket, opcode, b"".join(parts)):
                    return
            await self._flush()  # pongs
            data = await self.connection.read()
            if not data:
                return
            self.protocol.receive_data(data)
            events = list(self.protocol.events_received())

    async def _flush(self) -> bool:
        """Send what the protocol has to send; False when the server no longer takes it."""
        async with self._flushing:
            for data in self.protocol.data_to_send():
                try:
                    if not data:  # the protocol's end of stream
                        await self.connection.end_input()
                    elif not await send_to(self.connection, data):
                        return False
                except GatewayTimeout:  # it has taken nothing for STALL_SECONDS: given up
                    return False
        return True


async def _deliver(websocket: WebSocket, opcode: Opcode, message: bytes) -> bool:
    """Send one message to the client; False when it has gone."""
    try:
        if opcode == Opcode.TEXT:
            await websocket.send_text(message.decode("utf-8", "replace"))
        else:
            await websocket.send_bytes(message)
    except Exception:  # disconnected (uvicorn's ClientDisconnected, Starlette's WebSocketDisconnect...)
        return False
    return True
