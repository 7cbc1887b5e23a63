"""Who may reach a sandbox's envd: its access token, and the signatures of file URLs made from it.

The token is an HMAC of the sandbox's id under one of its owner's API keys, so there is no
secret of agentbox's own to keep or share between servers, any key of the owner gives the
same sandbox a token that works, and removing a key revokes the tokens made with it. Signed
file URLs follow E2B's v1 scheme (the SDK makes them; see e2b/sandbox/signature.py): the
SHA-256 of `path:operation:user:token[:expiration]`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def _token(key: str, use: str, sandbox_id: str) -> str:
    digest = hmac.new(key.encode(), f"{use}:{sandbox_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def envd_token(key: str, sandbox_id: str) -> str:
    """What the SDK sends envd as X-Access-Token."""
    return _token(key, "envd", sandbox_id)


def traffic_token(key: str, sandbox_id: str) -> str:
    """What reaches the ports of a sandbox made with `allowPublicTraffic: false` (E2B's
    `e2b-traffic-access-token` header)."""
    return _token(key, "traffic", sandbox_id)


def token_matches(presented: str, keys: Iterable[str], sandbox_id: str, use: str = "envd") -> bool:
    """Whether `presented` is the `use` token of `sandbox_id` under one of `keys` (in constant time each)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), _token(key, use, sandbox_id).encode())
    return matched


def signature(path: str, operation: str, user: str, token: str, expiration: int | None) -> str:
    raw = f"{path}:{operation}:{user}:{token}" + ("" if expiration is None else f":{expiration}")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()


def signature_matches(presented: str, path: str, operation: str, user: str, token: str, expiration: str | None) -> bool:
    """Whether a file URL's `signature` is the one `token` makes for it (its expiry is checked apart)."""
    if expiration is not None and not expiration.isdigit():
        return False
    expected = signature(path, operation, user, token, int(expiration) if expiration is not None else None)
    return hmac.compare_digest(presented.encode(), expected.encode())
