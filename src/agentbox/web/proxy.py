"""HTTP proxying onto a server inside a workspace, over one port connection per request, and what
may pass between the two (the header policy that WebSocket relays, websocket_relay.py, share).

HTTP/1.1 is spoken to the workspace's server with h11 (one request per connection,
`Connection: close`), on the event loop over an `AsyncPort` (sandbox/async_tunnel.py): a body
goes on only as fast as the server takes it, at most WORKSPACE_MAX_PROXIED_BODY.

Where an answer is shown decides what it may carry. A preview host (`{port}-{id}.{domain}`,
marked by previews.PreviewHosts) is the app's own origin: its answer passes as it is, its cookies
made host-only. Anywhere else (the path forms, E2B's header form) is agentbox's own origin, the
dashboard's and the API's, so the answer is shown as an opaque origin (`SANDBOXED`): it sets no
cookie, no service worker scope, nothing else that acts on the whole origin (`ORIGIN_WIDE`), the
app receives no cookie of that origin, and a page of that origin cannot load it as a script, a
style or a worker. What the client sent to reach agentbox (its API key, E2B's tokens, agentbox's
preview cookie and parameter, a Referer naming a preview token) never reaches the workspace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import h11
from fastapi import Request
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agentbox.errors import Forbidden, PayloadTooLarge, ProviderError
from agentbox.sandbox.async_tunnel import AsyncPort, as_async
from agentbox.sandbox.runtime import PortConnection
from agentbox.web.streaming import CutShort

#: Seconds the workspace's server has to start answering (its status line and headers), and to
#: answer a WebSocket's upgrade.
ANSWER_SECONDS = 60.0
#: Seconds the workspace's server may leave a request's body untaken before the request is given up.
STALL_SECONDS = 60.0
PREVIEW_COOKIE = "agentbox_preview"
#: Set in the ASGI scope by previews.PreviewHosts on a request to a preview host: (port, workspace id).
PREVIEW_HOST = "agentbox.preview_host"

_NOT_FORWARDED = frozenset(
    {
        # hop-by-hop, or framing that is agentbox's own towards the server
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # the client's credentials for agentbox or E2B's endpoint, never the app's
        "authorization",
        "proxy-authorization",
        "x-access-token",
        "e2b-traffic-access-token",
        # set by agentbox itself
        "x-forwarded-host",
        "x-forwarded-prefix",
        "x-forwarded-proto",
    }
)
#: What the answer's framing was between the app and agentbox, not between agentbox and the client.
_HOP_BY_HOP_ANSWER = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
#: Answer headers that act on the whole origin showing them (or on the browser's dealings with it):
#: never passed from an app on agentbox's own origin. Its CSP and the like are replaced by SANDBOXED.
ORIGIN_WIDE = frozenset(
    {
        b"set-cookie",
        b"set-cookie2",
        b"service-worker-allowed",
        b"clear-site-data",
        b"strict-transport-security",
        b"public-key-pins",
        b"public-key-pins-report-only",
        b"expect-ct",
        b"alt-svc",
        b"nel",
        b"report-to",
        b"reporting-endpoints",
        b"accept-ch",
        b"critical-ch",
        b"origin-trial",
        b"origin-agent-cluster",
        b"speculation-rules",
        b"set-login",
        b"access-control-allow-credentials",
        b"content-security-policy",
        b"content-security-policy-report-only",
        b"referrer-policy",
        b"x-content-type-options",
        b"permissions-policy",
        b"document-policy",
        b"cross-origin-opener-policy",
        b"cross-origin-opener-policy-report-only",
        b"cross-origin-embedder-policy",
        b"cross-origin-embedder-policy-report-only",
    }
)
#: What an app's answer on agentbox's own origin is sent with. `sandbox` without `allow-same-origin`
#: makes its page an opaque origin: its scripts run, but cannot read the origin's storage or
#: cookies, register a service worker, or call the API as the dashboard. (No Cross-Origin-
#: Resource-Policy: the page's own images and scripts come to it from a different origin now, its
#: own opaque one, and `same-origin` would block them.)
SANDBOXED = [
    (b"content-security-policy", b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the path form's URL carries its token
]
#: What a page of agentbox's own origin (the dashboard) may not load from an app: code or styles
#: would run as the dashboard, whatever the app's answer says (`Sec-Fetch-Dest`).
_NOT_EMBEDDED = frozenset(
    {"script", "style", "worker", "sharedworker", "serviceworker", "audioworklet", "paintworklet", "xslt", "json"}
)

#: How a request reaches a workspace's port: in a worker thread, the connection made, and the Host header
#: the app there is sent (`request_host`). The workspace and port are the caller's choice, made before,
#: from the URL the client used; the Host never routes anything.
Connect = Callable[[], tuple[PortConnection, str]]
#: What a workspace's `request_host` (E2B's `maskRequestHost`) names the port by.
PORT_PLACEHOLDER = "${PORT}"


def request_host(mask: str | None, port: int) -> str:
    """The Host an app on `port` is sent: the workspace's mask with its port in, else ``localhost:<port>``."""
    return f"localhost:{port}" if mask is None else mask.replace(PORT_PLACEHOLDER, str(port))


class GatewayTimeout(ProviderError):
    status_code = 504


def own_origin(connection: HTTPConnection) -> bool:
    """Whether the request came to a preview host: the app's own origin, not agentbox's."""
    return PREVIEW_HOST in connection.scope


def forwarded_headers(connection: HTTPConnection, host: str, prefix: str) -> list[tuple[bytes, bytes]]:
    """The client's headers as the workspace's server gets them: hop-by-hop ones and agentbox's and E2B's
    credentials removed, Host `host` (`request_host`), where the request really went in X-Forwarded-* (the prefix only
    when it is not secret: "" for a preview token's path), and cookies only on the app's own origin."""
    own = own_origin(connection)
    kept = []
    for name, value in connection.headers.raw:
        lower = name.lower()
        if lower.decode("latin-1") in _NOT_FORWARDED:
            continue
        if lower == b"cookie":
            if not own:
                continue  # agentbox's origin's jar is shared by every path-form preview: none of it is the app's
            value = _without_preview_cookie(value)
        elif lower == b"referer" and _names_a_token(value):
            continue
        if value:
            kept.append((name, value))
    return [
        (b"host", host.encode("latin-1")),
        *kept,
        (b"x-forwarded-host", connection.headers.get("host", "").encode("latin-1")),
        (b"x-forwarded-proto", connection.url.scheme.replace("ws", "http", 1).encode()),
        *([(b"x-forwarded-prefix", prefix.encode("latin-1"))] if prefix else []),
    ]


def _without_preview_cookie(value: bytes) -> bytes:
    crumbs = [c.strip() for c in value.split(b";")]
    return b"; ".join(c for c in crumbs if c and not c.startswith(PREVIEW_COOKIE.encode() + b"="))


def _names_a_token(referer: bytes) -> bool:
    """A Referer from a path-form page (/preview/{token}/...) or a URL with the preview parameter."""
    text = referer.decode("latin-1")
    return PREVIEW_COOKIE in text or urlsplit(text).path.startswith("/preview/")


def answer_headers(headers: Iterable[tuple[bytes, bytes]], own: bool) -> list[tuple[bytes, bytes]]:
    """The app's answer headers as the client gets them (see the module's docstring)."""
    kept = [(name, value) for name, value in headers if name not in _HOP_BY_HOP_ANSWER]
    if not own:
        return [*[(name, value) for name, value in kept if name not in ORIGIN_WIDE], *SANDBOXED]
    return [
        (name, _host_only(value)) if name == b"set-cookie" else (name, value)
        for name, value in kept
        if not (name == b"set-cookie" and value.lstrip().startswith(PREVIEW_COOKIE.encode() + b"="))
    ]


def _host_only(cookie: bytes) -> bytes:
    """A Set-Cookie without its Domain: a preview's cookie is for its own host, not its siblings under
    the same preview domain."""
    first, *attributes = cookie.split(b";")
    kept = [a for a in attributes if a.split(b"=", 1)[0].strip().lower() != b"domain"]
    return b";".join([first, *kept])


def _embedding_refused(headers: Headers) -> bool:
    if headers.get("service-worker"):
        return True  # a service worker's script: never from an app on agentbox's origin
    return headers.get("sec-fetch-site") == "same-origin" and headers.get("sec-fetch-dest", "") in _NOT_EMBEDDED


async def open_port(connect: Connect) -> tuple[AsyncPort, str]:
    """A connection to the server, and the Host it is sent: made in a worker thread (briefly: a socket's
    connect, an exec), then driven from the event loop. Shielded, so that a client leaving meanwhile
    cannot leak it."""
    with anyio.CancelScope(shield=True):
        connection, host = await anyio.to_thread.run_sync(connect)
    return as_async(connection), host


async def close_port(port: AsyncPort) -> None:
    with anyio.CancelScope(shield=True):
        await port.aclose()


# HTTP


async def proxy_http(request: Request, connect: Connect, target: str, prefix: str) -> Response:
    """Send `request` to the server `connect` reaches (at `target`, its path and query there) and stream its
    answer.

    A 502 when nothing listens there, a 504 when it does not start answering in ANSWER_SECONDS (or
    leaves the body untaken for STALL_SECONDS), a 413 past WORKSPACE_MAX_PROXIED_BODY.
    """
    own = own_origin(request)
    if not own and _embedding_refused(request.headers):
        raise Forbidden(
            "a page of agentbox's own origin may not load a workspace's app as a script, style or worker: "
            "open the app's preview URL (GET /api/v1/workspaces/{id}/ports/{port}/url) instead"
        )
    limit: int = request.app.state.service.settings.max_proxied_body
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    has_body = length not in (None, "0") or "chunked" in request.headers.get("transfer-encoding", "")
    connection, host = await open_port(connect)
    try:
        headers = forwarded_headers(request, host, prefix)
        client = h11.Connection(h11.CLIENT)
        framing = [(b"content-length", length.encode())] if length is not None else []
        if length is None and request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            framing = [(b"transfer-encoding", b"chunked")]
        head = h11.Request(
            method=request.method, target=target, headers=[*headers, *framing, (b"connection", b"close")]
        )
        taken = await send_to(connection, client.send(head))
        if taken and has_body:
            taken = await _send_body(request, client, connection, limit)
        if taken:
            await send_to(connection, client.send(h11.EndOfMessage()))
        answer = await _answer_head(client, connection)
    except BaseException:
        await close_port(connection)
        raise
    return _Relayed(
        _answer_body(client, connection), answer.status_code, answer_headers(answer.headers, own), connection
    )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body exceeds {limit} bytes, the most sent on to a workspace's server "
        "(WORKSPACE_MAX_PROXIED_BODY): send less, or ask the server's operator to raise it"
    )


async def send_to(connection: AsyncPort, data: bytes | None) -> bool:
    """Write `data`; False when the server no longer takes any (its answer may say why)."""
    if not data:
        return True
    try:
        with anyio.fail_after(STALL_SECONDS):
            await connection.write(data)
    except BrokenPipeError:
        return False
    except TimeoutError:
        raise GatewayTimeout(
            f"the workspace's server took none of the request's body for {STALL_SECONDS:g} seconds: see its output "
            "(GET .../processes/{pid}/output), or whether it is busy"
        ) from None
    return True


async def _send_body(request: Request, client: h11.Connection, connection: AsyncPort, limit: int) -> bool:
    """The request's body, as it arrives and as fast as the server takes it; counted, so that a body
    without a Content-Length is held to `limit` too."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if chunk and not await send_to(connection, client.send(h11.Data(data=chunk))):
            return False
    return True


async def _answer_head(client: h11.Connection, connection: AsyncPort) -> h11.Response:
    """The status line and headers, within ANSWER_SECONDS."""
    with anyio.move_on_after(ANSWER_SECONDS):
        try:
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await connection.read())
                elif isinstance(event, h11.Response):
                    return event
                elif isinstance(event, h11.ConnectionClosed):
                    raise ProviderError(
                        "the workspace's server closed the connection without answering: see its output "
                        "(GET .../processes/{pid}/output) for why"
                    )
                # an InformationalResponse (100 Continue): the answer comes after it
        except h11.RemoteProtocolError as exc:
            raise ProviderError(
                f"the workspace's server did not answer in HTTP/1.1 ({exc}): is an HTTP server listening on that port?"
            ) from None
    raise GatewayTimeout(
        f"the workspace's server did not answer within {ANSWER_SECONDS:g} seconds: see its output "
        "(GET .../processes/{pid}/output), or whether it is busy"
    )


async def _answer_body(client: h11.Connection, connection: AsyncPort) -> AsyncIterator[bytes]:
    """The answer's body as it comes (read only as fast as the client takes it); CutShort if it breaks off."""
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            raise CutShort from None  # the client sees the answer broken, as it would have directly
        if event is h11.NEED_DATA:
            client.receive_data(await connection.read())
        elif isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        elif isinstance(event, h11.ConnectionClosed):
            raise CutShort


class _Relayed(StreamingResponse):
    """The app's answer, streamed; its connection closed however the answer ends."""

    def __init__(
        self, content: AsyncIterator[bytes], status_code: int, headers: list[tuple[bytes, bytes]], port: AsyncPort
    ) -> None:
        super().__init__(content, status_code=status_code)
        self.raw_headers = headers  # as a list: a header may come more than once (Set-Cookie)
        self._port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except CutShort:
            pass  # without its last message the server ends the connection: the client's read fails
        finally:
            await close_port(self._port)
