"""AES-256-GCM for secrets at rest (GitHub App private keys and webhook secrets).

A sealed value is `version (1) | key id (4) | nonce (12) | ciphertext and tag`. Every value
has its own random nonce and is bound to where it is stored by the associated data (table,
row id, column), so a ciphertext copied to another row or column does not decrypt. The key
id (the first bytes of the key's SHA-256) says which key sealed it, so that during a key
rotation the old and the new key can both be in use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
KEY_ID_SIZE = 4
NONCE_SIZE = 12


class BadKey(ValueError):
    """A key is malformed; the message says what a good one looks like (never the key)."""


class DecryptError(Exception):
    """A sealed value cannot be opened: another key, another row, or tampered with."""


def parse_key(text: str) -> bytes:
    """32 bytes given as 64 hex digits or as base64 (standard or URL-safe)."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise BadKey(
            "must be 32 random bytes as 64 hex digits or base64; make one with "
            "`python3 -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:KEY_ID_SIZE]


class Keyring:
    """Seals with the current key; opens with whichever of the current and old keys sealed a value."""

    def __init__(self, current: bytes, *old: bytes) -> None:
        self.current = current
        self._keys = {key_id(k): AESGCM(k) for k in (*old, current)}

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext, context.encode())
        return VERSION + key_id(self.current) + nonce + sealed

    def open(self, blob: bytes, context: str) -> bytes:
        if len(blob) < 1 + KEY_ID_SIZE + NONCE_SIZE + 16 or blob[:1] != VERSION:
            raise DecryptError("not a sealed value")
        cipher = self._keys.get(blob[1 : 1 + KEY_ID_SIZE])
        if cipher is None:
            raise DecryptError("sealed under a key this server does not have (rotated away?)")
        nonce = blob[1 + KEY_ID_SIZE : 1 + KEY_ID_SIZE + NONCE_SIZE]
        try:
            return cipher.decrypt(nonce, blob[1 + KEY_ID_SIZE + NONCE_SIZE :], context.encode())
        except InvalidTag:
            raise DecryptError("tampered with, or copied from another row") from None

    def sealed_with_current(self, blob: bytes) -> bool:
        return blob[1 : 1 + KEY_ID_SIZE] == key_id(self.current)
