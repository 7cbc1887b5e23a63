"""Who may reach a sandbox's envd: its access token, and the signatures of file URLs made from it.

The access token (and the traffic token of a sandbox without public ports) is bound to the
sandbox and to the API key that created or connected to it (auth/tokens.py `Tokens.bound`): it
is signed with the server's secret, works while that key does, and says nothing about the key.
Signed file URLs follow E2B's v1 scheme (the SDK makes them; see e2b/sandbox/signature.py): the
SHA-256 of `path:operation:user:token[:expiration]`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from agentbox.auth.keys import Caller
from agentbox.auth.tokens import ENVD, TRAFFIC, Tokens
from agentbox.db.models import Workspace


def envd_token(tokens: Tokens, caller: Caller, sandbox_id: str) -> str:
    """What the SDK sends envd as X-Access-Token."""
    return tokens.bound(caller, ENVD, sandbox_id)


def traffic_token(tokens: Tokens, caller: Caller, sandbox_id: str) -> str:
    """What reaches the ports of a sandbox made with `allowPublicTraffic: false` (E2B's
    `e2b-traffic-access-token` header)."""
    return tokens.bound(caller, TRAFFIC, sandbox_id)


def envd_tokens(tokens: Tokens, workspace: Workspace) -> list[str]:
    """Every access token `workspace` may have been handed out with (one per working key of its owner)."""
    return tokens.bound_of(workspace.owner, ENVD, workspace.id)


def signature(path: str, operation: str, user: str, token: str, expiration: int | None) -> str:
    raw = f"{path}:{operation}:{user}:{token}" + ("" if expiration is None else f":{expiration}")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()


def signature_matches(presented: str, path: str, operation: str, user: str, token: str, expiration: str | None) -> bool:
    """Whether a file URL's `signature` is the one `token` makes for it (its expiry is checked apart)."""
    if expiration is not None and not expiration.isdigit():
        return False
    expected = signature(path, operation, user, token, int(expiration) if expiration is not None else None)
    return hmac.compare_digest(presented.encode(), expected.encode())
