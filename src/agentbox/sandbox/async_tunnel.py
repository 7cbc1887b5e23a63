"""Port connections driven by the event loop: a proxied request or WebSocket costs no thread.

A `Tunnel` (tunnel.py) is blocking: reading it waits in a thread, so a WebSocket that stays open
for hours held a worker thread of the API's pool for hours. Here a connection is a coroutine's:

- over the control socket (the common case, control.py), the socket is taken over from its call
  and read and written without blocking, its frames (`>BL` kind + size, kind 1 the server's
  bytes) parsed here as they arrive, in pieces: a frame's size is never trusted to gather it;
- any other transport (the Docker exec fallback, the e2b provider's commands) keeps its blocking
  calls, in threads of limiters of its own (FALLBACK_THREADS each way), never the API's pool.

Writes wait until the socket (or the tunnel's bounded queue) takes the bytes: a client that sends
faster than the workspace's server reads is paced by that server, never buffered here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Protocol

import anyio
import anyio.to_thread

from agentbox.sandbox.control import MAX_FRAME, READ_SIZE, STDERR, STDOUT, SocketCall
from agentbox.sandbox.runtime import PortConnection
from agentbox.sandbox.tunnel import Tunnel

#: Blocking calls of connections over other transports at once, per direction (reads; writes and
#: closes): past it they wait for one another, the API's own pool untouched.
FALLBACK_THREADS = 128
_HEADER = struct.Struct(">BL")


class AsyncPort(Protocol):
    """A connection to a server in a workspace, for coroutines."""

    async def read(self) -> bytes:
        """The next bytes the server sent; b"" once its side has closed (or the connection broke)."""

    async def write(self, data: bytes) -> None:
        """Send all of `data`, waiting while the server does not take it; BrokenPipeError once it is gone."""

    async def end_input(self) -> None:
        """Nothing more will be written: the server reads the end of its input."""

    async def aclose(self) -> None:
        """End the connection; a read or write waiting on it returns or fails at once."""


def as_async(connection: PortConnection) -> AsyncPort:
    """`connection` (just made, nothing read or written yet) as an AsyncPort; a connection that wraps another
    (the core's, which holds its workspace awake while open) makes its own, over its inner one's."""
    own = getattr(connection, "as_async", None)
    if callable(own):
        converted: AsyncPort = own()
        return converted
    if isinstance(connection, Tunnel) and isinstance(connection.call, SocketCall):
        return SocketPort(*connection.call.detach())
    return ThreadedPort(connection)


class SocketPort:
    """The helper's `connect` call on the control socket, read and written from the event loop."""

    def __init__(self, sock: socket.socket, received: bytes = b"") -> None:
        sock.setblocking(False)
        self._sock = sock
        self._raw = bytearray(received)  # received, not parsed yet: at most one READ_SIZE piece
        self._kind = 0  # the kind of the frame being read
        self._left = 0  # its payload's bytes still to come; 0: a header comes next
        self._ended = False
        self._closed = False
        self._writing = anyio.Lock()  # a WebSocket's two directions both write

    async def read(self) -> bytes:
        while True:
            data = self._parse()
            if data:
                return data
            if self._ended or not await self._receive():
                self._ended = True
                return b""

    def _parse(self) -> bytes:
        """The server's bytes among what was received; ends the connection at an exit, a refusal, or a
        frame no helper sends (a workload may answer on the socket instead of the helper)."""
        out = bytearray()
        while self._raw and not self._ended:
            if self._left == 0:
                if len(self._raw) < _HEADER.size:
                    break
                kind, size = _HEADER.unpack_from(self._raw)
                del self._raw[: _HEADER.size]
                if kind not in (STDOUT, STDERR) or size > MAX_FRAME:
                    self._ended = True  # an exit (the connection is over), or not our helper
                    break
                self._kind, self._left = kind, size
                continue
            with memoryview(self._raw) as view:
                piece = view[: self._left]
                if self._kind == STDOUT:
                    out += piece
                taken = len(piece)
                piece.release()
            del self._raw[:taken]
            self._left -= taken
        return bytes(out)

    async def _receive(self) -> bool:
        """One more piece into `_raw`; False at the end of the socket (or once closed)."""
        while not self._closed:
            try:
                data = self._sock.recv(READ_SIZE)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._sock)
                except (anyio.ClosedResourceError, OSError):
                    return False
                continue
            except OSError:
                return False
            self._raw += data
            return bool(data)
        return False

    async def write(self, data: bytes) -> None:
        async with self._writing:
            with memoryview(data) as view:
                while view:
                    if self._closed:
                        raise BrokenPipeError("the connection to the workspace's server has ended")
                    try:
                        sent = self._sock.send(view)
                    except BlockingIOError:
                        try:
                            await anyio.wait_writable(self._sock)
                        except (anyio.ClosedResourceError, OSError):
                            raise BrokenPipeError("the connection to the workspace's server has ended") from None
                        continue
                    except OSError as exc:
                        raise BrokenPipeError(f"the connection to the workspace's server has ended ({exc})") from None
                    view = view[sent:]

    async def end_input(self) -> None:
        if not self._closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        anyio.notify_closing(self._sock)  # wakes a read or write waiting on it
        self._sock.close()  # the helper ends its connection to the server


_reads = anyio.CapacityLimiter(FALLBACK_THREADS)
_writes = anyio.CapacityLimiter(FALLBACK_THREADS)
_closes = anyio.CapacityLimiter(FALLBACK_THREADS)  # never behind writes that wait for the server


class ThreadedPort:
    """A blocking PortConnection, its calls in threads of the fallback limiters."""

    def __init__(self, connection: PortConnection) -> None:
        self._connection = connection
        self._closed = False

    async def read(self) -> bytes:
        try:
            return await anyio.to_thread.run_sync(self._connection.read, limiter=_reads, abandon_on_cancel=True)
        except Exception:  # the call failed under it (the helper gone, the engine away): its end
            return b""

    async def write(self, data: bytes) -> None:
        try:
            await anyio.to_thread.run_sync(self._connection.write, data, limiter=_writes, abandon_on_cancel=True)
        except OSError as exc:
            raise BrokenPipeError(f"the connection to the workspace's server has ended ({exc})") from None
        except Exception as exc:  # the transport's own errors (E2B's)
            raise BrokenPipeError(f"the connection to the workspace's server has ended ({exc})") from None

    async def end_input(self) -> None:
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(self._connection.end_input, limiter=_writes, abandon_on_cancel=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            # A close ends whatever blocks in the other calls (their threads then return).
            await anyio.to_thread.run_sync(self._connection.close, limiter=_closes)
