"""The helper channel's TCP handshake and its key: pure logic, no sockets (handshake.c is the helper's side).

A workspace's helper can serve its control protocol on a TCP port in the workspace's network
namespace (tcp.py). Whoever reaches that port must first prove it knows the workspace's channel
key, and so must the helper, since an address the host remembers may meanwhile belong to
another workspace. Challenge-response both ways, each side's proof covering the other's fresh
nonce:

    host -> helper   MAGIC + the host's nonce (NONCE_BYTES random bytes)
    helper -> host   the helper's nonce + HMAC-SHA256(key, LISTENER_LABEL || id || NUL || host nonce || helper nonce)
    host -> helper   HMAC-SHA256(key, CLIENT_LABEL || id || NUL || host nonce || helper nonce), then the request

The host sends its proof (and the request after it) only once the helper's proof checked out;
the helper reads the request only once the host's did. The labels keep the two proofs apart: what
the helper answers to a stranger's nonce is never a host's proof.

The key (`channel_key`) is derived from the server's secret and the workspace id, so every
replica of the control plane computes it and none stores it; the sandbox gets it as a file that
only root reads there (`key_file_text`), read by the helper's init before it drops to the
workspace's user.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

MAGIC = b"AGXT"
NONCE_BYTES = 32
PROOF_BYTES = 32
KEY_BYTES = 32
#: What the host sends first, and what the helper answers.
OPENING_BYTES = len(MAGIC) + NONCE_BYTES
ANSWER_BYTES = NONCE_BYTES + PROOF_BYTES
LISTENER_LABEL = b"agentbox-helper-channel-1 listener"
CLIENT_LABEL = b"agentbox-helper-channel-1 client"
#: The context the server's secret is used in for channel keys, and nothing else.
KEY_CONTEXT = b"helper-channel:"
#: handshake.c's bound on the workspace id (the proofs are built in a fixed buffer).
MAX_ID_BYTES = 256


class HandshakeRefused(Exception):
    """The other side did not prove it knows the workspace's channel key."""


def channel_key(server_secret: bytes, workspace_id: str) -> bytes:
    """The workspace's channel key: HMAC-SHA256(server secret, "helper-channel:" + id).

    The same on every replica sharing the secret (WORKSPACE_SECRET_KEY), so none stores it; and
    a workspace's key says nothing of another's, or of the secret.
    """
    return hmac.new(server_secret, KEY_CONTEXT + workspace_id.encode(), hashlib.sha256).digest()


def key_file_text(key: bytes) -> bytes:
    """The key as the helper reads it from its file (a Kubernetes Secret's value would be the same)."""
    return key.hex().encode() + b"\n"


def _proof(key: bytes, label: bytes, workspace_id: str, client_nonce: bytes, listener_nonce: bytes) -> bytes:
    message = label + workspace_id.encode() + b"\0" + client_nonce + listener_nonce
    return hmac.new(key, message, hashlib.sha256).digest()


def listener_proof(key: bytes, workspace_id: str, client_nonce: bytes, listener_nonce: bytes) -> bytes:
    return _proof(key, LISTENER_LABEL, workspace_id, client_nonce, listener_nonce)


def client_proof(key: bytes, workspace_id: str, client_nonce: bytes, listener_nonce: bytes) -> bytes:
    return _proof(key, CLIENT_LABEL, workspace_id, client_nonce, listener_nonce)


def _check_id(workspace_id: str) -> None:
    if not workspace_id or len(workspace_id.encode()) > MAX_ID_BYTES or "\0" in workspace_id:
        raise ValueError(f"a workspace id of 1 to {MAX_ID_BYTES} bytes without NUL, not {workspace_id!r}")


class ClientHandshake:
    """The host's side: `opening()` to send, then `answer(what the helper sent)` -> the proof to send.

    One per connection: its nonce is fresh, and a transcript of it is worth nothing on another.
    """

    def __init__(self, key: bytes, workspace_id: str, nonce: bytes | None = None) -> None:
        _check_id(workspace_id)
        self._key = key
        self.workspace_id = workspace_id
        self.nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        if len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce of {NONCE_BYTES} bytes")

    def opening(self) -> bytes:
        return MAGIC + self.nonce

    def answer(self, listener_message: bytes) -> bytes:
        """Our proof, once the helper's checked out; HandshakeRefused (send nothing more) otherwise."""
        if len(listener_message) != ANSWER_BYTES:
            raise HandshakeRefused(f"answered {len(listener_message)} bytes where the helper sends {ANSWER_BYTES}")
        listener_nonce, said = listener_message[:NONCE_BYTES], listener_message[NONCE_BYTES:]
        expected = listener_proof(self._key, self.workspace_id, self.nonce, listener_nonce)
        if not hmac.compare_digest(said, expected):
            raise HandshakeRefused(f"answered without proof that it knows the channel key of {self.workspace_id}")
        return client_proof(self._key, self.workspace_id, self.nonce, listener_nonce)


class ListenerHandshake:
    """The helper's side, as handshake.c does it (for tests and for what stands in for a helper).

    `reply(opening)` -> the answer to send; `admits(proof)` -> whether the host proved itself.
    """

    def __init__(self, key: bytes, workspace_id: str, nonce: bytes | None = None) -> None:
        _check_id(workspace_id)
        self._key = key
        self.workspace_id = workspace_id
        self.nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._client_nonce: bytes | None = None

    def reply(self, opening: bytes) -> bytes:
        if len(opening) != OPENING_BYTES or not opening.startswith(MAGIC):
            raise HandshakeRefused("not a channel handshake")
        self._client_nonce = opening[len(MAGIC) :]
        return self.nonce + listener_proof(self._key, self.workspace_id, self._client_nonce, self.nonce)

    def admits(self, proof: bytes) -> bool:
        if self._client_nonce is None:
            return False
        expected = client_proof(self._key, self.workspace_id, self._client_nonce, self.nonce)
        return hmac.compare_digest(proof, expected)
