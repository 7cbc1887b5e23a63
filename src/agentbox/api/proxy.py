"""HTTP and WebSocket proxying onto a server inside a workspace, over one `PortConnection` per request.

HTTP/1.1 is spoken to the workspace's server with h11 (one request per connection,
`Connection: close`); a WebSocket with the sans-I/O protocol of `websockets`, its messages
relayed to the client's socket one by one. What the client sent to reach agentbox (its API
key, agentbox's preview cookie) is never passed on to the workspace.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import anyio
import anyio.from_thread
import h11
from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.responses import Response
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.uri import parse_uri

from agentbox.api.files import sync_chunks
from agentbox.api.streaming import ClosingStreamingResponse, CutShort
from agentbox.errors import AgentboxError, ProviderError
from agentbox.providers.base import PortConnection

#: Seconds the workspace's server has to start answering (its status line and headers).
ANSWER_SECONDS = 60.0
#: Bytes of one WebSocket message relayed at most, either way.
MAX_MESSAGE = 16 << 20
PREVIEW_COOKIE = "agentbox_preview"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
        "content-length",
    }
)
#: What the answer's framing was between the app and agentbox, not between agentbox and the client.
_HOP_BY_HOP_ANSWER = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})

Connect = Callable[[], PortConnection]


def forwarded_headers(headers: list[tuple[bytes, bytes]], port: int, prefix: str) -> list[tuple[bytes, bytes]]:
    """The client's headers as the workspace's server gets them: hop-by-hop ones and agentbox's own
    credentials removed, Host its own, and where the request really went in X-Forwarded-*."""
    kept = [(name, value) for name, value in headers if name.lower().decode() not in _HOP_BY_HOP]
    kept = [
        (name, _without_preview_cookie(value)) if name.lower() == b"cookie" else (name, value) for name, value in kept
    ]
    original = dict(headers)
    return [
        (b"host", f"localhost:{port}".encode()),
        *[(name, value) for name, value in kept if value],
        (b"x-forwarded-host", original.get(b"host", b"")),
        (b"x-forwarded-prefix", prefix.encode()),
    ]


def _without_preview_cookie(value: bytes) -> bytes:
    crumbs = [c.strip() for c in value.split(b";")]
    return b"; ".join(c for c in crumbs if c and not c.startswith(PREVIEW_COOKIE.encode() + b"="))


async def proxy_http(request: Request, connect: Connect, target: str, prefix: str, port: int) -> Response:
    """Send `request` to the server on `port` (at `target`, its path and query there) and stream its answer.

    A 502 when nothing listens there, a 504 when it does not start answering in ANSWER_SECONDS.
    """
    headers = forwarded_headers(request.headers.raw, port, prefix)
    length = request.headers.get("content-length")
    has_body = length not in (None, "0") or "chunked" in request.headers.get("transfer-encoding", "")
    body = sync_chunks(request.stream(), 1 << 40) if has_body else iter(())
    status, answer_headers, content = await anyio.to_thread.run_sync(
        _exchange, connect, request.method, target, headers, body, length
    )
    response = ClosingStreamingResponse(content, status_code=status)
    response.raw_headers = answer_headers  # as a list: a header may come more than once (Set-Cookie)
    return response


def _exchange(
    connect: Connect,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: Iterator[bytes],
    length: str | None,
) -> tuple[int, list[tuple[bytes, bytes]], Iterator[bytes]]:
    connection = connect()
    try:
        client = h11.Connection(h11.CLIENT)
        framing = [(b"content-length", length.encode())] if length is not None else []
        if length is None and method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            framing = [(b"transfer-encoding", b"chunked")]
        request = h11.Request(method=method, target=target, headers=[*headers, *framing, (b"connection", b"close")])
        connection.write(client.send(request) or b"")
        for chunk in body:
            connection.write(client.send(h11.Data(data=chunk)) or b"")
        connection.write(client.send(h11.EndOfMessage()) or b"")
        answer = _answer_head(client, connection)
    except BaseException:
        connection.close()
        raise
    headers_out = [(name, value) for name, value in answer.headers if name not in _HOP_BY_HOP_ANSWER]
    return answer.status_code, headers_out, _answer_body(client, connection)


def _answer_head(client: h11.Connection, connection: PortConnection) -> h11.Response:
    """The status line and headers, within ANSWER_SECONDS (the connection is closed to stop waiting)."""
    timer = threading.Timer(ANSWER_SECONDS, connection.close)
    timer.start()
    try:
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(connection.read())
                continue
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                if not timer.is_alive():
                    raise TimeoutError
                raise ProviderError(
                    "the workspace's server closed the connection without answering: see its output "
                    "(GET .../processes/{pid}/output) for why"
                )
    except TimeoutError:
        raise GatewayTimeout(
            f"the workspace's server did not answer within {ANSWER_SECONDS:g} seconds: see its output "
            "(GET .../processes/{pid}/output), or whether it is busy"
        ) from None
    except h11.RemoteProtocolError as exc:
        raise ProviderError(
            f"the workspace's server did not answer in HTTP/1.1 ({exc}): is an HTTP server listening on that port?"
        ) from None
    finally:
        timer.cancel()


def _answer_body(client: h11.Connection, connection: PortConnection) -> Iterator[bytes]:
    try:
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(connection.read())
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise CutShort
    except h11.RemoteProtocolError:
        raise CutShort from None  # the client sees the answer broken, as it would have directly
    finally:
        connection.close()


class GatewayTimeout(ProviderError):
    status_code = 504


# WebSocket


async def proxy_websocket(websocket: WebSocket, connect: Connect, target: str, port: int) -> None:
    """Relay `websocket` to a WebSocket server on `port` at `target`, message by message, until either
    side closes. The client's socket is refused (with the error's status) when the server's is."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        upstream = await anyio.to_thread.run_sync(_Upstream.open, connect, port, target, offered)
    except AgentboxError as exc:
        await websocket.send_denial_response(_error(exc))
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_client_to_upstream, websocket, upstream)
        await anyio.to_thread.run_sync(upstream.relay_to, websocket, abandon_on_cancel=True)
        tasks.cancel_scope.cancel()
    upstream.close()
    with contextlib.suppress(Exception):  # the client may have gone already: nothing left to tell it
        await websocket.close(code=upstream.close_code)


def _error(exc: AgentboxError) -> Response:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


async def _client_to_upstream(websocket: WebSocket, upstream: _Upstream) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            await anyio.to_thread.run_sync(upstream.send_close, message.get("code", 1000))
            return
        if message.get("bytes") is not None:
            await anyio.to_thread.run_sync(upstream.send, Opcode.BINARY, message["bytes"])
        elif message.get("text") is not None:
            await anyio.to_thread.run_sync(upstream.send, Opcode.TEXT, message["text"].encode())


class _Upstream:
    """The WebSocket client side, towards the workspace's server (websockets' sans-I/O protocol)."""

    def __init__(self, connection: PortConnection, protocol: ClientProtocol, answer: HandshakeResponse) -> None:
        self.connection = connection
        self.protocol = protocol
        self.subprotocol = answer.headers.get("Sec-WebSocket-Protocol")
        #: What the client's socket is closed with: the server's own code, or 1014 (bad gateway) when
        #: the server's connection ended without one.
        self.close_code = 1014
        self._lock = threading.Lock()  # the protocol is shared by the two directions

    @classmethod
    def open(cls, connect: Connect, port: int, target: str, subprotocols: list[str]) -> _Upstream:
        connection = connect()
        try:
            protocol = ClientProtocol(
                parse_uri(f"ws://localhost:{port}{target}"),
                subprotocols=subprotocols or None,  # type: ignore[arg-type]
                max_size=MAX_MESSAGE,
            )
            protocol.send_request(protocol.connect())
            cls._flush(protocol, connection)
            while True:
                data = connection.read()
                if not data:
                    raise ProviderError("the workspace's server closed the connection during the WebSocket handshake")
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, HandshakeResponse):
                        if protocol.handshake_exc is not None:
                            raise ProviderError(
                                f"the workspace's server refused the WebSocket (HTTP {event.status_code}): "
                                f"{protocol.handshake_exc}"
                            )
                        return cls(connection, protocol, event)
        except BaseException:
            connection.close()
            raise

    def relay_to(self, websocket: WebSocket) -> None:
        """Messages from the server to the client (in a worker thread) until the server closes."""
        parts: list[bytes] = []
        opcode = Opcode.TEXT
        while data := self.connection.read():
            with self._lock:
                self.protocol.receive_data(data)
                events = self.protocol.events_received()
                self._flush(self.protocol, self.connection)  # pongs, the answer to a close
            for frame in events:
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode == Opcode.CLOSE:
                    code = self.protocol.close_code
                    self.close_code = code if code is not None and code not in (1005, 1006, 1015) else 1000
                    return
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    opcode, parts = frame.opcode, [bytes(frame.data)]
                elif frame.opcode == Opcode.CONT:
                    parts.append(bytes(frame.data))
                else:
                    continue  # ping and pong: the protocol answers pings itself
                if frame.fin and not self._to_client(websocket, opcode, b"".join(parts)):
                    return

    @staticmethod
    def _to_client(websocket: WebSocket, opcode: Opcode, message: bytes) -> bool:
        """Send one message to the client; False when it has gone."""
        try:
            if opcode == Opcode.TEXT:
                anyio.from_thread.run(websocket.send_text, message.decode("utf-8", "replace"))
            else:
                anyio.from_thread.run(websocket.send_bytes, message)
        except Exception:  # disconnected (uvicorn's ClientDisconnected, Starlette's WebSocketDisconnect...)
            return False
        return True

    def send(self, opcode: Opcode, data: bytes) -> None:
        with self._lock:
            if opcode == Opcode.TEXT:
                self.protocol.send_text(data)
            else:
                self.protocol.send_binary(data)
            self._flush(self.protocol, self.connection)

    def send_close(self, code: int) -> None:
        with self._lock:
            try:
                self.protocol.send_close(code if 1000 <= code < 5000 and code not in (1005, 1006) else 1000)
            except Exception:  # already closing
                return
            self._flush(self.protocol, self.connection)

    def close(self) -> None:
        self.connection.close()

    @staticmethod
    def _flush(protocol: ClientProtocol, connection: PortConnection) -> None:
        for data in protocol.data_to_send():
            if data:
                connection.write(data)
