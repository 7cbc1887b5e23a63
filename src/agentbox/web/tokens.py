"""Credentials outside the Authorization dependency: a WebSocket's bearer header, the tokens made for
what cannot send one (a browser's WebSocket, a preview link), and E2B's tokens bound to a sandbox.
Each is counted when refused (rate limits) and watched when accepted (revocation). See auth/tokens.py.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi.requests import HTTPConnection

from agentbox.auth.keys import Caller
from agentbox.db.models import Workspace
from agentbox.errors import Unauthorized
from agentbox.web.dependencies import authenticated, in_thread, refused, watched


async def bearer_caller(connection: HTTPConnection) -> Caller:
    """The caller of an `Authorization: Bearer <key>` header; Unauthorized without a key that works."""
    scheme, _, presented = (connection.headers.get("authorization") or "").partition(" ")
    found = await authenticated(connection.app.state.service.keys, presented) if scheme.lower() == "bearer" else None
    if found is None:
        refused(connection)
        raise Unauthorized("a valid API key is needed: send `Authorization: Bearer <key>`")
    return watched(connection, found)


def bound_caller(connection: HTTPConnection, presented: str, use: str, workspace: Workspace) -> Caller | None:
    """The caller of a token bound to `workspace` for `use` (E2B's access and traffic tokens), while its key
    works and is the workspace owner's; None without one. May read the database (call it in a thread)."""
    if not presented:
        return None
    found = connection.app.state.service.tokens.check_bound(presented, use, workspace.id, workspace.owner)
    if found is None:
        refused(connection)
        return None
    return watched(connection, found)


async def token_caller(connection: HTTPConnection, token: str, use: str, **expected: Any) -> Caller | None:
    """The caller a token for `use` (carrying `expected`) was minted for, while its key works; None otherwise."""
    tokens = connection.app.state.service.tokens
    found: Caller | None = await in_thread(functools.partial(tokens.check, token, use, **expected))
    if found is None:
        refused(connection)
        return None
    return watched(connection, found)
