"""Credentials outside the Authorization dependency: a WebSocket's bearer header, and the tokens
made for what cannot send one (a browser's WebSocket, a preview link). See auth/tokens.py.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi.requests import HTTPConnection

from agentbox.api.dependencies import authenticated, in_thread, refused, watched
from agentbox.auth.keys import Caller
from agentbox.errors import Unauthorized


async def bearer_caller(connection: HTTPConnection) -> Caller:
    """The caller of an `Authorization: Bearer <key>` header; Unauthorized without a key that works."""
    scheme, _, presented = (connection.headers.get("authorization") or "").partition(" ")
    found = await authenticated(connection.app.state.service.keys, presented) if scheme.lower() == "bearer" else None
    if found is None:
        refused(connection)
        raise Unauthorized("a valid API key is needed: send `Authorization: Bearer <key>`")
    return watched(connection, found)


async def token_caller(connection: HTTPConnection, token: str, use: str, **expected: Any) -> Caller | None:
    """The caller a token for `use` (carrying `expected`) was minted for, while its key works; None otherwise."""
    tokens = connection.app.state.service.tokens
    found: Caller | None = await in_thread(functools.partial(tokens.check, token, use, **expected))
    if found is None:
        refused(connection)
        return None
    return watched(connection, found)
