"""Tokens made for what cannot send an API key: preview links, terminal sockets, E2B's envd and traffic.

Every token is signed with the server's own secret (`server_secret`), never with an API key, so a
token gives nothing to guess a key with. Each carries the id of the key that asked for it, what it
is for (`use`), what it opens and when it expires; it works only while that key does, so revoking
a key ends everything minted with it.

Two shapes: a JWT (HS256) where the token carries its claims (previews, terminals), and a short
`<key id>.<HMAC>` bound to one sandbox where E2B's SDK expects an opaque, lasting string (envd's
access token, the traffic token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt

from agentbox.auth.keys import ApiKeys, Caller

log = logging.getLogger("agentbox.auth")

_ALGORITHM = "HS256"
#: Bytes of a secret made by the server.
SECRET_BYTES = 32
SECRET_FILE = "secret-key"
#: Uses of tokens bound to one E2B sandbox: envd's access token, and the traffic token that opens
#: its ports (the `e2b-traffic-access-token` header).
ENVD, TRAFFIC = "envd", "traffic"


def server_secret(configured: str, data_dir: Path) -> bytes:
    """The secret tokens are signed with: WORKSPACE_SECRET_KEY when set (what replicas share), else
    one made at the first start and kept in the data directory (mode 0600)."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"{path} is too short to be agentbox's secret: delete it to make a new one") from None
        return secret
    secret = secrets.token_urlsafe(SECRET_BYTES).encode()
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret + b"\n")
    log.info("made the server's token secret in %s (set WORKSPACE_SECRET_KEY to share one between servers)", path)
    return secret


class Tokens:
    """Mints and checks tokens with one server secret, against the key records of `keys`."""

    def __init__(self, secret: bytes, keys: ApiKeys) -> None:
        self._secret = secret
        self.keys = keys

    def mint(self, caller: Caller, use: str, seconds: int, **claims: Any) -> tuple[str, int]:
        """A JWT for `use` carrying `claims`, valid for `seconds` while `caller`'s key works; and its expiry."""
        expires = int(time.time()) + seconds
        payload = {**claims, "use": use, "kid": caller.key_id, "sub": caller.owner, "exp": expires}
        return jwt.encode(payload, self._secret, algorithm=_ALGORITHM), expires

    def check(self, token: str, use: str, **expected: Any) -> Caller | None:
        """The caller a JWT was minted for, if it is ours, unexpired, for `use`, carries every claim in
        `expected`, and its key still works for the same owner; None otherwise."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALGORITHM], options={"require": ["exp", "kid"]})
        except jwt.PyJWTError:
            return None
        if claims.get("use") != use or any(claims.get(name) != value for name, value in expected.items()):
            return None
        return self._working(claims.get("kid"), claims.get("sub"))

    @staticmethod
    def claims(token: str) -> dict[str, Any]:
        """A JWT's claims, unverified: only to learn what it names, before `check` verifies it."""
        try:
            found: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return {}
        return found

    def bound(self, caller: Caller, use: str, subject: str) -> str:
        """A lasting token for `use` on `subject` (a sandbox id), working while `caller`'s key does."""
        return self.bound_with(caller.key_id, use, subject)

    def bound_with(self, key_id: str, use: str, subject: str) -> str:
        """The `bound` token key `key_id` makes for `use` on `subject` (whether the key works or not)."""
        return f"{key_id}.{self._mac(key_id, use, subject)}"

    def check_bound(self, presented: str, use: str, subject: str, owner: str) -> Caller | None:
        """The caller of a `bound` token for `use` on `subject`, if its key works and is `owner`'s."""
        key_id, _, mac = presented.partition(".")
        if not key_id or not hmac.compare_digest(mac.encode(), self._mac(key_id, use, subject).encode()):
            return None
        return self._working(key_id, owner)

    def bound_of(self, owner: str, use: str, subject: str) -> list[str]:
        """Every `bound` token of `owner`'s working keys (what a signed E2B file URL may have been made with)."""
        return [self.bound_with(key.id, use, subject) for key in self.keys.find(owner)]

    def _mac(self, key_id: str, use: str, subject: str) -> str:
        digest = hmac.new(self._secret, f"{use}:{key_id}:{subject}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _working(self, key_id: object, owner: object) -> Caller | None:
        caller = self.keys.active(key_id) if isinstance(key_id, str) else None
        return caller if caller is not None and caller.owner == owner else None
