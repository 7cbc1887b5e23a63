"""Short-lived tokens for what cannot send an Authorization header: a browser's WebSocket, a preview URL.

A token is a JWT signed with the API key that asked for it. There is no secret of its own to
share between servers, and removing the key revokes every token it minted.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from agentbox.api.dependencies import owner_of_key
from agentbox.errors import Unauthorized

_ALGORITHM = "HS256"


def bearer(header: str | None, keys: dict[str, str]) -> tuple[str, str]:
    """(owner, key) of an `Authorization: Bearer <key>` header; Unauthorized without a valid one."""
    scheme, _, presented = (header or "").partition(" ")
    owner = owner_of_key(keys, presented) if scheme.lower() == "bearer" else None
    if owner is None:
        raise Unauthorized("a valid API key is needed: send `Authorization: Bearer <key>`")
    return owner, presented


def mint(owner: str, key: str, seconds: int, **claims: Any) -> tuple[str, int]:
    """A token for `owner` carrying `claims`, valid for `seconds`; and when it expires (Unix time)."""
    expires = int(time.time()) + seconds
    return jwt.encode({**claims, "sub": owner, "exp": expires}, key, algorithm=_ALGORITHM), expires


def owner_of(token: str, keys: dict[str, str], **expected: Any) -> str | None:
    """The owner a token was minted for, if it is signed by one of their keys, unexpired and carries
    every claim in `expected`; None otherwise."""
    try:
        claimed = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    for key, owner in keys.items():
        if owner != claimed:
            continue
        try:
            claims = jwt.decode(token, key, algorithms=[_ALGORITHM], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError:
            continue
        if all(claims.get(name) == value for name, value in expected.items()):
            return owner
    return None
