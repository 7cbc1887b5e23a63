"""The helper's control socket: a `Transport` that reaches it without `docker exec`.

In a workspace made with a control directory, the helper's init keeps a server on a Unix
socket there (agentbox-exec.c, "serve"); the directory is bind-mounted from the host, so the
server connects to it like any local socket, with no network in the workspace. Each call
is one connection: the helper says who it is, takes the request, and answers in frames
(1 stdout, 2 stderr, 3 exit code, 4 could not start). Binary data travels as it is.

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
from collections.abc import Iterable, Iterator
from pathlib import Path

from agentbox.errors import BadRequest, ProviderError
from agentbox.sandbox.channel import Call, Invocation, Transport

log = logging.getLogger("agentbox.sandbox.control")

MAGIC = b"AGX1"
EXIT, REFUSED = 3, 4  # frame kinds past 1 (stdout) and 2 (stderr), which the channel reads as they are
#: How long a helper may take to say who it is; it answers at once unless the sandbox is wedged.
HELLO_SECONDS = 10.0


class ControlSocketError(Exception):
    """The socket cannot be used (no server, someone else answered): the caller may fall back."""


class SocketStream:
    """A connected socket to a helper: its stdin, and reads of exact sizes with a deadline."""

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self._sock = sock
        self._deadline = deadline
        self._pending = b""

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

    def _recv_exactly(self, size: int) -> bytes | None:
        while len(self._pending) < size:
            if self._deadline is not None:
                self._sock.settimeout(max(0.01, self._deadline - time.monotonic()))
            data = self._sock.recv(max(65536, size - len(self._pending)))
            if not data:
                return None
            self._pending += data
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def close(self) -> None:
        self._sock.close()


class SocketCall(SocketStream):
    """One request to the helper over its own connection (a `Call` of the channel)."""

    _exit: int | None = None

    def frames(self) -> Iterator[tuple[int, bytes]]:
        while True:
            header = self._recv_exactly(5)
            if header is None:
                return
            kind, size = struct.unpack(">BL", header)
            payload = self._recv_exactly(size)
            if payload is None:
                return
            if kind == EXIT:
                (self._exit,) = struct.unpack(">i", payload)
                return
            if kind == REFUSED:
                raise _refusal(payload.decode("utf-8", "replace"))
            yield kind, payload

    def exit_code(self) -> int:
        if self._exit is None:
            raise ProviderError(
                "the command ended without an exit status: the workspace's sandbox stopped under it "
                "(it restarts by itself if it crashed); run the command again"
            )
        return self._exit


class ControlSocketTransport:
    """The helper of workspace `workspace_id` at the socket `path` (a `Transport` of the channel)."""

    def __init__(self, path: Path, workspace_id: str) -> None:
        self.path = path
        self.workspace_id = workspace_id

    def call(self, invocation: Invocation) -> SocketCall:
        """Raises ControlSocketError when nothing (or the wrong helper) answers: then fall back to another way in."""
        entries = [f"{key}={value}" for key, value in (invocation.env or {}).items()]
        fields = [invocation.cwd or "", str(len(entries)), *entries, *invocation.argv]
        request = b"".join(field.encode() + b"\0" for field in fields)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(HELLO_SECONDS)
            self._connect(sock)
            # The request goes before the helper's hello is read: waking the sandbox once rather than
            # twice saves milliseconds under gVisor. `_connect` makes sure only this workspace listens.
            sock.sendall(struct.pack(">L", len(request)) + request)
            self._check_hello(sock)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"{self.path}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        if not invocation.stdin:
            sock.shutdown(socket.SHUT_WR)
        return SocketCall(sock, invocation.deadline)

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

    def _check_hello(self, sock: socket.socket) -> None:
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
            raise ControlSocketError(f"{self.path}: answered {hello[:80]!r}, not the helper of {self.workspace_id}")


class SocketFirst:
    """The control socket when it answers, else `fallback` (a `Transport` of the channel).

    The fallback serves workspaces made before they had a control socket, and runtimes that
    cannot pass a Unix socket through to the host (runsc without --host-uds=create).
    """

    def __init__(self, primary: ControlSocketTransport, fallback: Transport) -> None:
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
