"""Ending what a revoked key started: every request and WebSocket that outlives the moment of its check.

A key is checked when a request arrives; a follower, a terminal or a proxied WebSocket may then
run for hours. `EndOnRevocation` runs each request inside a cancel scope, which the code that
authenticates it ties to the key (`Revocations.watch`); a loop asks the database every
`INTERVAL` seconds which of the watched keys were revoked (on any replica) and cancels what they
hold open: a WebSocket is closed with 1008, an HTTP answer not yet begun is a 401, and one being
streamed is cut off.
"""

from __future__ import annotations

import logging
import threading

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentbox.auth.keys import ApiKeys
from agentbox.web.dependencies import in_thread

log = logging.getLogger("agentbox.api")

#: Seconds between two looks at the watched keys: a revocation ends their connections within this.
INTERVAL = 0.5
_STATE = "agentbox.revocable"
#: WebSocket close code for "policy violation": what a client sees when the key it used is revoked.
REVOKED_CLOSE = 1008


class Revocations:
    def __init__(self) -> None:
        # watch() is called from worker threads too (a token checked there), the rest from the loop.
        self._lock = threading.Lock()
        self._by_key: dict[str, set[anyio.CancelScope]] = {}
        self._key_of: dict[anyio.CancelScope, str] = {}

    def watch(self, scope: Scope, key_id: str) -> None:
        """End the request of `scope` when key `key_id` is revoked (no-op outside `EndOnRevocation`)."""
        cancel = scope.get("state", {}).get(_STATE)
        if isinstance(cancel, anyio.CancelScope):
            with self._lock:
                self._by_key.setdefault(key_id, set()).add(cancel)
                self._key_of[cancel] = key_id

    def forget(self, cancel: anyio.CancelScope) -> None:
        with self._lock:
            key_id = self._key_of.pop(cancel, None)
            held = self._by_key.get(key_id, set()) if key_id is not None else set()
            held.discard(cancel)
            if key_id is not None and not held:
                self._by_key.pop(key_id, None)

    async def run(self, keys: ApiKeys) -> None:
        """Cancel what keys revoked in `keys` hold open, every INTERVAL seconds, for ever."""
        while True:
            await anyio.sleep(INTERVAL)
            with self._lock:
                watched = list(self._by_key)
            if not watched:
                continue
            try:
                revoked = await in_thread(keys.revoked_among, watched)
            except Exception:  # the database away for a moment: look again next round
                log.warning("checking live connections' keys failed", exc_info=True)
                continue
            with self._lock:
                ending = [cancel for key_id in revoked for cancel in self._by_key.get(key_id, ())]
            for cancel in ending:
                cancel.cancel()


class EndOnRevocation:
    """Runs each HTTP request and WebSocket in a cancel scope that `Revocations.watch` can tie to a key."""

    def __init__(self, app: ASGIApp, revocations: Revocations) -> None:
        self.app = app
        self.revocations = revocations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] in ("http.response.start", "websocket.accept", "websocket.close")
            await send(message)

        with anyio.CancelScope() as cancel:
            scope.setdefault("state", {})[_STATE] = cancel
            try:
                await self.app(scope, receive, sending)
            finally:
                self.revocations.forget(cancel)
        if not cancel.cancelled_caught:
            return
        log.info("ended a %s request whose API key was revoked", scope["type"])
        if scope["type"] == "websocket":
            # Before the accept this is a refusal (403); after it, a close the client sees.
            await send({"type": "websocket.close", "code": REVOKED_CLOSE, "reason": "API key revoked"})
        elif not started:
            body = (
                b'{"detail":"the API key of this request was revoked: ask an admin for a key (agentbox keys create)"}'
            )
            await send(
                {"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
        # An answer already under way is left cut short: the server closes the connection.
