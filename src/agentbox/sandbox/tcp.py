"""The helper's control protocol over TCP: a `Transport` for a control plane that is not on the sandbox's host.

The helper's init can listen on a TCP port in the workspace's network namespace (init.c,
handshake.c: `init -K KEY_FILE -T PORT`). A connection there first goes through the handshake of
handshake.py (both ends prove they know the workspace's channel key, on fresh nonces); after it, the request,
the hello and the frames are exactly those of the Unix socket (control.FramedTransport), so
every call of the channel, the tunnels of previews and the event loop's take-over of a socket
(async_tunnel.py) work over it unchanged.

The address comes from the provider (`addresses`): what it remembers, or a fresh look when asked.
An address remembered from before a restart may meanwhile be another workspace's: its helper
cannot prove this workspace's key, so the call looks the address up afresh and tries once more.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from agentbox.sandbox.channel import Invocation
from agentbox.sandbox.control import HELLO_SECONDS, ControlSocketError, FramedTransport, SocketCall
from agentbox.sandbox.handshake import ANSWER_BYTES, ClientHandshake, HandshakeRefused

log = logging.getLogger("agentbox.sandbox.tcp")

#: `addresses(fresh)`: the workspace's address on its network (a fresh look when `fresh`), or None when
#: it has none (a workspace without network). Raises WorkspaceGone when the workspace is gone.
Addresses = Callable[[bool], str | None]


class TcpTransport(FramedTransport):
    """The helper of workspace `workspace_id` on TCP `port` at the address `addresses` gives, with `key`."""

    def __init__(self, workspace_id: str, key: bytes, port: int, addresses: Addresses) -> None:
        self.workspace_id = workspace_id
        self.port = port
        self._key = key
        self._addresses = addresses

    @property
    def where(self) -> str:
        return f"{self.workspace_id}'s helper over TCP port {self.port}"

    def call(self, invocation: Invocation) -> SocketCall:
        address = self._addresses(False)
        try:
            return self._call_at(address, invocation)
        except ControlSocketError as exc:
            fresh = self._addresses(True)
            if fresh == address:
                raise
            log.debug("%s: %s; its address is now %s", self.where, exc, fresh)
            return self._call_at(fresh, invocation)

    def _call_at(self, address: str | None, invocation: Invocation) -> SocketCall:
        if address is None:
            raise ControlSocketError(f"{self.where}: the workspace has no address (no network)")
        return self._call(lambda: self._open_at(address), f"{self.where} at {address}", invocation)

    def _open_at(self, address: str) -> socket.socket:
        sock = socket.create_connection((address, self.port), timeout=HELLO_SECONDS)
        try:
            # A frame is small and waits for nothing: Nagle's algorithm would hold each write until the
            # helper's delayed ACK of the one before (up to 40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handshake = ClientHandshake(self._key, self.workspace_id)
            sock.sendall(handshake.opening())
            answer = _receive_exactly(sock, ANSWER_BYTES)
            try:
                proof = handshake.answer(answer)
            except HandshakeRefused as exc:
                # Nothing more goes to a listener that does not know the key: not the request, nor its
                # env or stdin, which may be secrets of this workspace's owner.
                raise ControlSocketError(f"{address}:{self.port} {exc}") from None
            # The request follows at once (FramedTransport): the helper reads it only once this proof
            # checked out, and closes the connection unread otherwise.
            sock.sendall(proof)
        except BaseException:
            sock.close()
            raise
        return sock


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes, or fewer when the other end closes first (the handshake then fails on its length)."""
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))  # not a byte more: the hello and the answer follow
        if not piece:
            break
        data += piece
    return data
