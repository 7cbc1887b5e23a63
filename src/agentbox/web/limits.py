"""Rate limits in the API (auth/limits.py): a client address that failed too often is refused outright,
and callers that bring no credential at all are counted against the anonymous limit."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox.auth.limits import Throttle

#: Headers that carry a credential of some kind (a key, an envd or traffic token).
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-access-token", b"e2b-traffic-access-token"})
#: Query parameters and cookie names that carry one (terminal tokens, preview links, signed E2B file URLs).
_CREDENTIAL_PARAMS = (b"token=", b"agentbox_preview=", b"signature=")


class RateLimits:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        throttle: Throttle = scope["app"].state.service.throttle
        client = scope.get("client")
        address = client[0] if client else ""
        wait = throttle.blocked(address)
        reason = "too many refused credentials from your address"
        if wait is None and not _credentialed(scope):
            wait = throttle.anonymous(address)
            reason = "too many calls without an API key from your address"
        if wait is None:
            await self.app(scope, receive, send)
            return
        body = f'{{"detail":"{reason}: try again in {wait} s"}}'.encode()
        headers = [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode())]
        prefix = "websocket." if scope["type"] == "websocket" else ""
        await send({"type": prefix + "http.response.start", "status": 429, "headers": headers})
        await send({"type": prefix + "http.response.body", "body": body})


def _credentialed(scope: Scope) -> bool:
    """Whether the request brings something that could be a credential (checked, and counted if refused,
    where it is used)."""
    headers = scope.get("headers", [])
    if any(name in _CREDENTIAL_HEADERS for name, _ in headers):
        return True
    query: bytes = scope.get("query_string", b"")
    cookies = b";".join(value for name, value in headers if name == b"cookie")
    return (
        scope["path"].startswith("/preview/")
        or any(query.startswith(p) or b"&" + p in query for p in _CREDENTIAL_PARAMS)
        or b"agentbox_preview=" in cookies
    )
