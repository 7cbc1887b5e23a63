"""A TCP connection to a port on a sandbox's own loopback, through the helper's `connect PORT`.

Bytes each way over whatever transport reaches the helper (the control socket, an exec, an E2B
command), so a port preview needs no route into the workspace's network.

What is written is paced by the server in the workspace, never gathered here: a call with a
socket of its own (the control socket, a hijacked exec) is written straight to it, so a write
waits while the socket is full; a call that takes its stdin as an iterator (an E2B command) is
fed from a queue of at most QUEUE_BYTES, and a write waits while it is full.

The proxy does not use these blocking calls for the control socket: it takes the socket over and
drives it from the event loop (async_tunnel.py).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agentbox.sandbox.channel import Call

#: Bytes queued for a call without a socket of its own before a write waits for the sender.
QUEUE_BYTES = 1 << 20


@runtime_checkable
class _Writable(Protocol):
    """A call whose stdin can be written piece by piece (control.SocketStream)."""

    def write(self, data: bytes) -> None: ...

    def end_input(self) -> None: ...


class Tunnel:
    """One connection: `read` what the server sends, `write` to it, `end_input` when all is sent.

    Not for concurrent readers; writes may come from another thread than reads (a WebSocket's
    two directions). A write after the connection ended raises BrokenPipeError (or the socket's
    OSError).
    """

    def __init__(self, call: Call, received: Iterator[bytes]) -> None:
        self._call = call
        self._received = received
        self._lock = threading.Lock()  # one writer at a time
        self._room = threading.Condition()
        self._queue: collections.deque[bytes | None] = collections.deque()
        self._queued = 0
        self._sender: threading.Thread | None = None
        self._closed = False

    @property
    def call(self) -> Call:
        """The helper's call under the connection (async_tunnel takes a control socket's over)."""
        return self._call

    def read(self) -> bytes:
        """The next bytes the server sent; b"" once it has closed its side."""
        for chunk in self._received:
            if chunk:
                return chunk
        return b""

    def write(self, data: bytes) -> None:
        """Send `data` to the server, in order; waits while what it has not taken yet is at its bound."""
        if not data:
            return
        call = self._call
        if isinstance(call, _Writable):
            with self._lock:
                call.write(data)  # a socket: its own buffer is the bound
            return
        with self._room:
            while self._queued >= QUEUE_BYTES and not self._closed:
                self._room.wait()
            if self._closed:
                raise BrokenPipeError("the connection to the workspace's server has ended")
            self._queue.append(data)
            self._queued += len(data)
            self._room.notify_all()
        self._start_sender()

    def end_input(self) -> None:
        """Nothing more will be written: the server reads the end of its input."""
        call = self._call
        if isinstance(call, _Writable):
            with self._lock:
                call.end_input()
            return
        with self._room:
            self._queue.append(None)
            self._room.notify_all()
        self._start_sender()

    def close(self) -> None:
        """End the connection (the helper closes its socket to the server)."""
        with self._room:
            self._closed = True
            self._room.notify_all()
        self._call.close()

    def _start_sender(self) -> None:
        with self._room:
            if self._sender is not None:
                return
            self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        try:
            self._call.send(self._queued_chunks())
        except Exception:  # the connection ended under it (closed, or the helper gone): reads see the end
            with self._room:
                self._closed = True
                self._room.notify_all()

    def _queued_chunks(self) -> Iterator[bytes]:
        while True:
            with self._room:
                while not self._queue and not self._closed:
                    self._room.wait()
                if self._closed or (data := self._queue.popleft()) is None:
                    return
                self._queued -= len(data)
                self._room.notify_all()
            yield data
