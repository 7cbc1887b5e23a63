"""The helper's control protocol over a socket of its own, and its Unix socket: `Transport`s without `docker exec`.

In a workspace made with a control directory, the helper's init keeps a server on a Unix
socket there (server.c, worker.c); the directory is bind-mounted from the host, so the
server connects to it like any local socket, with no network in the workspace. Each call
is one connection: the helper says who it is, takes the request, and answers in frames
(1 stdout, 2 stderr, 3 exit code, 4 could not start). Binary data travels as it is.

The same protocol goes over TCP (tcp.py) once a handshake has proved both ends know the
workspace's channel key: `FramedTransport` is what the two share, and they differ only in how
the socket is opened (`_open`).

Why a socket rather than `docker exec`: each exec costs the engine a new runsc process and
a round trip through dockerd and containerd (~60 ms under gVisor here); a connection costs
~80 µs, so a command costs little more than starting it inside the sandbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agentbox.errors import BadRequest, ProviderError
from agentbox.sandbox.channel import Call, HelperMalformed, Invocation, Transport

log = logging.getLogger("agentbox.sandbox.control")

MAGIC = b"AGX1"
STDOUT, STDERR, EXIT, REFUSED = 1, 2, 3, 4  # the helper's frame kinds; 1 and 2 go to the channel as they are
#: How long a helper may take to say who it is; it answers at once unless the sandbox is wedged.
HELLO_SECONDS = 10.0

# What a workspace's helper sends is untrusted: a workload can put its own listener on the
# control socket and answer a correct hello. So every size it announces is checked against
# what the genuine helper (output.c, worker.c) can send, with room to spare, before any of it is
# read, and payloads are handed on in pieces as they arrive, never gathered whole.

#: The largest frame the genuine helper sends is one read of a file that says it is empty
#: (/proc, /sys: get_sizeless in files.c sends up to SIZELESS_MAX = 1 MiB at once); output, file bodies
#: and listings go in pieces of at most BUFSZ (64 KiB, helper.h). Four times the largest: a
#: frame announced past this is not our helper talking. Public: every reader of frames uses it.
MAX_FRAME = 4 << 20
#: A refusal is one short line (refuse() in worker.c formats it into 4200 bytes).
MAX_REFUSAL = 64 << 10
#: Bytes asked of the socket at once, and so the largest piece of a payload handed on.
READ_SIZE = 64 << 10


class ControlSocketError(Exception):
    """The socket cannot be used (no server, someone else answered): the caller may fall back."""


def encode_request(invocation: Invocation) -> bytes:
    """The request as the helper reads it: u32 length, then NUL-terminated cwd, env count, env, argv."""
    entries = [f"{key}={value}" for key, value in (invocation.env or {}).items()]
    fields = [invocation.cwd or "", str(len(entries)), *entries, *invocation.argv]
    request = b"".join(field.encode() + b"\0" for field in fields)
    return struct.pack(">L", len(request)) + request


class SocketStream:
    """A connected socket to a helper: its stdin, and its answer read with a deadline.

    What it reads ahead is at most one READ_SIZE piece: headers are read exactly, payloads
    handed on in pieces (`_pieces`), so a call holds a constant amount whatever is announced.
    """

    def __init__(self, sock: socket.socket, deadline: float | None, idle: float | None = None) -> None:
        self._sock = sock
        self._deadline = deadline
        self._idle = idle
        self._ahead = bytearray()  # received, not yet handed on (at most one READ_SIZE piece)

    def send(self, chunks: Iterable[bytes]) -> int:
        """Write all of `chunks` to the command's stdin, then close it; return the bytes sent."""
        sent = 0
        try:
            for chunk in chunks:
                self.write(chunk)
                sent += len(chunk)
        except BrokenPipeError:
            pass  # the command stopped reading; its exit status says why
        self.end_input()
        return sent

    def write(self, data: bytes) -> None:
        """Part of the command's stdin; BrokenPipeError once it stopped reading."""
        self._sock.sendall(data)

    def end_input(self) -> None:
        """Close the command's stdin: it reads the end."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def _recv(self, size: int) -> bytes:
        """At most `size` bytes, as soon as some arrive; b"" at the end. TimeoutError past the deadline,
        HelperMalformed after `idle` seconds of silence."""
        left = None if self._deadline is None else max(0.01, self._deadline - time.monotonic())
        if self._idle is None or (left is not None and left <= self._idle):
            self._sock.settimeout(left)
            return self._sock.recv(size)
        self._sock.settimeout(self._idle)
        try:
            return self._sock.recv(size)
        except TimeoutError:
            raise HelperMalformed(f"nothing for {self._idle:g} s in the middle of its answer") from None

    def _receive(self) -> bool:
        """One more piece from the socket into `_ahead`; False at its end."""
        data = self._recv(READ_SIZE)
        self._ahead += data
        return bool(data)

    def _recv_exactly(self, size: int) -> bytes | None:
        """`size` bytes (a header: small), or None if the answer ends first."""
        while len(self._ahead) < size:
            if not self._receive():
                return None
        data = bytes(self._ahead[:size])
        del self._ahead[:size]
        return data

    def _pieces(self, size: int) -> Iterator[bytes]:
        """The next `size` bytes in pieces of at most READ_SIZE, as they arrive; fewer if the answer ends."""
        while size > 0:
            if self._ahead:
                with memoryview(self._ahead) as view:
                    piece = bytes(view[:size])
                del self._ahead[: len(piece)]
            else:  # straight from the socket: no copy through `_ahead`
                piece = self._recv(min(size, READ_SIZE))
                if not piece:
                    return
            size -= len(piece)
            yield piece

    def close(self) -> None:
        self._sock.close()

    def detach(self) -> tuple[socket.socket, bytes]:
        """The socket and what was received and not handed on yet, for a reader of its own (the event
        loop's, sandbox/async_tunnel.py); this stream must not be read afterwards."""
        ahead = bytes(self._ahead)
        self._ahead.clear()
        return self._sock, ahead


class SocketCall(SocketStream):
    """One request to the helper over its own connection (a `Call` of the channel)."""

    _exit: int | None = None

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """Output as it comes, a large frame in several pieces; HelperMalformed for a frame no helper sends."""
        while True:
            header = self._recv_exactly(5)
            if header is None:
                return
            kind, size = struct.unpack(">BL", header)
            if kind in (STDOUT, STDERR) and size <= MAX_FRAME:
                for piece in self._pieces(size):
                    yield kind, piece
                continue
            if kind == EXIT and size == 4:
                payload = self._recv_exactly(size)
                if payload is not None:
                    (self._exit,) = struct.unpack(">i", payload)
                return
            if kind == REFUSED and size <= MAX_REFUSAL:
                payload = self._recv_exactly(size)
                raise _refusal((payload or b"").decode("utf-8", "replace"))
            raise HelperMalformed(f"a frame of kind {kind} and {size} bytes (at most {MAX_FRAME} of output)")

    def exit_code(self) -> int:
        if self._exit is None:
            raise ProviderError(
                "the command ended without an exit status: the workspace's sandbox stopped under it "
                "(it restarts by itself if it crashed); run the command again"
            )
        return self._exit


class FramedTransport:
    """The helper of workspace `workspace_id` over a socket of this transport's own (a `Transport` of the
    channel): the request, the helper's hello, then its frames, whatever the socket is.

    A subclass says how the socket is opened (`_open`, or an opener of its own given to `_call`:
    connected, and whoever answers proven to be this workspace's helper as far as the transport can
    tell before the request goes) and what to call the other end in errors (`where`).
    """

    workspace_id: str

    @property
    def where(self) -> str:
        raise NotImplementedError

    def _open(self) -> socket.socket:
        """A connected socket, its timeout HELLO_SECONDS; OSError or ControlSocketError when there is none."""
        raise NotImplementedError

    def call(self, invocation: Invocation) -> SocketCall:
        """Raises ControlSocketError when nothing (or the wrong helper) answers: then fall back to another way in."""
        return self._call(self._open, self.where, invocation)

    def _call(self, opener: Callable[[], socket.socket], where: str, invocation: Invocation) -> SocketCall:
        request = encode_request(invocation)
        try:
            sock = opener()
        except OSError as exc:
            raise ControlSocketError(f"{where}: {exc}") from None
        try:
            # The request goes before the helper's hello is read: waking the sandbox once rather than
            # twice saves milliseconds under gVisor. `_open` made sure only this workspace's helper listens.
            sock.sendall(request)
            self._check_hello(sock, where)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"{where}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        if not invocation.stdin:
            sock.shutdown(socket.SHUT_WR)
        return SocketCall(sock, invocation.deadline, invocation.idle)

    def _check_hello(self, sock: socket.socket, where: str) -> None:
        # Whoever answers must say it is this workspace's helper: a socket left from an earlier
        # workspace with the same directory, or a workload's own listener, is not.
        expected = MAGIC + b" " + self.workspace_id.encode() + b"\n"
        hello = b""
        while len(hello) < len(expected):  # not a byte more: the answer follows at once
            data = sock.recv(len(expected) - len(hello))
            if not data:
                break
            hello += data
        if hello != expected:
            raise ControlSocketError(f"{where}: answered {hello[:80]!r}, not the helper of {self.workspace_id}")


class ControlSocketTransport(FramedTransport):
    """The helper of workspace `workspace_id` at the Unix socket `path` (a `Transport` of the channel)."""

    def __init__(self, path: Path, workspace_id: str) -> None:
        self.path = path
        self.workspace_id = workspace_id

    @property
    def where(self) -> str:
        return str(self.path)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(HELLO_SECONDS)
            self._connect(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect(self, sock: socket.socket) -> None:
        # The socket lives in a directory the workspace can write to: a workload could swap it for a
        # link to another workspace's socket, which would then run this workspace's commands. So the
        # socket is opened without following links, and must be a socket: one made in this directory,
        # which only this workspace's sandbox can make.
        fd = os.open(self.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise ControlSocketError(f"{self.path}: not a socket")
            sock.connect(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


class SocketFirst:
    """`primary` (the control socket, or the TCP channel) when it answers, else `fallback` (a `Transport`
    of the channel); `primary` raises ControlSocketError when it cannot be used.

    The fallback serves workspaces made before they had a control socket (or a TCP listener),
    runtimes that cannot pass a Unix socket through to the host (runsc without --host-uds=create),
    and workspaces without network over TCP (they have no address).
    """

    def __init__(self, primary: Transport, fallback: Transport) -> None:
        self.primary = primary
        self.fallback = fallback

    def call(self, invocation: Invocation) -> Call:
        try:
            return self.primary.call(invocation)
        except ControlSocketError as exc:
            log.debug("control socket unusable (%s): falling back", exc)
            return self.fallback.call(invocation)


def _refusal(message: str) -> Exception:
    if message.startswith("chdir "):
        return BadRequest(f"the working directory does not exist in the workspace: create it first ({message})")
    return ProviderError(
        f"the workspace's helper could not start the command ({message}): run it again; if it keeps failing, "
        "stop and start the workspace"
    )
