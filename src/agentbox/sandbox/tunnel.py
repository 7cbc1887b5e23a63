"""A TCP connection to a port on a sandbox's own loopback, through the helper's `connect PORT`.

Bytes each way over whatever transport reaches the helper (the control socket, an exec, an E2B
command), so a port preview needs no route into the workspace's network.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentbox.sandbox.channel import Call


class Tunnel:
    """One connection: `read` what the server sends, `write` to it, `end_input` when all is sent.

    Not for concurrent readers; writes may come from another thread than reads (a WebSocket's
    two directions).
    """

    def __init__(self, call: Call, received: Iterator[bytes]) -> None:
        self._call = call
        self._received = received
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._lock = threading.Lock()

    def read(self) -> bytes:
        """The next bytes the server sent; b"" once it has closed its side."""
        for chunk in self._received:
            if chunk:
                return chunk
        return b""

    def write(self, data: bytes) -> None:
        """Queue `data` for the server (sent in order, by a thread of the tunnel's own)."""
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send, daemon=True)
                self._sender.start()
        if data:
            self._outgoing.put(data)

    def end_input(self) -> None:
        """Nothing more will be written: the server reads the end of its input."""
        self.write(b"")
        self._outgoing.put(None)

    def close(self) -> None:
        """End the connection (the helper closes its socket to the server)."""
        self._outgoing.put(None)
        self._call.close()

    def _send(self) -> None:
        try:
            self._call.send(self._queued())
        except Exception:  # the connection ended under it (closed, or the helper gone): reads see the end
            return

    def _queued(self) -> Iterator[bytes]:
        while (data := self._outgoing.get()) is not None:
            yield data
