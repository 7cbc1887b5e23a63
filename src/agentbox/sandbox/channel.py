"""The one way into a sandbox: `agentbox-exec`'s wire protocol, over any transport.

A provider that can start the helper in its sandbox (with arguments, stdin, and stdout and
stderr kept apart) gives a `Transport`; `HelperChannel` turns that into commands and files.
The Docker provider's transport is the Engine API's exec; a Kubernetes one would be the pod
exec API. What the helper answers is defined by agentbox-exec.c:

    run [-t SECONDS] [-m MAX_BYTES] [-i] -- ARGV   output as it comes; exit code (124: timed out)
    get PATH            "F <size> <octal mode>\\n" + the bytes, or "D\\n" + NUL-separated entries
                        "<f|d|l|o> <size> <octal mode> <mtime> <name>", or "E <ERRNO> <message>"
    put PATH -p MODE -s SIZE   SIZE bytes on stdin, written atomically; "OK <size>" or "E ..."
    mkdir PATH          "OK" or "E ..."
    probe               exit 0 once the sandbox runs code
    watch PATH [-r]     "W", then "<type> <path>" per event, each ended by a NUL (an empty one: keep-alive)
    connect PORT        "OK\n", then the bytes of a connection to PORT on the sandbox's loopback (and
                        stdin to it), or "E ECONNREFUSED ..." when nothing listens there
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast, get_args

from agentbox.errors import BadRequest, FileError, ProviderError
from agentbox.providers.base import (
    TIMEOUT_EXIT_CODE,
    DirEntry,
    EntryType,
    ExecEvent,
    ExecRequest,
    Exit,
    FileStat,
    Output,
    WatchEvent,
    WatchEventType,
    signal_of,
)
from agentbox.sandbox.tunnel import Tunnel

# If the helper itself is wedged, the host gives up this long after the command's deadline.
HOST_GRACE_SECONDS = 10.0
NO_LIMIT = 1 << 62
_TYPES: dict[bytes, EntryType] = {b"f": "file", b"d": "dir", b"l": "symlink", b"o": "other"}
WATCH_EVENT_TYPES = set(get_args(WatchEventType))
T = TypeVar("T")


class Call(Protocol):
    """One run of the helper in the sandbox."""

    def send(self, chunks: Iterable[bytes]) -> int:
        """Write all of `chunks` to its stdin, then close it; return the bytes sent."""

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(1 for stdout | 2 for stderr, data) until it closes its output; TimeoutError past the deadline."""

    def exit_code(self) -> int: ...

    def close(self) -> None:
        """End the call; if the helper is still running a command, it kills the command's group."""


@dataclass(frozen=True)
class Invocation:
    """One start of the helper: its own arguments (`run ...`, `get PATH`...) and how to run it."""

    argv: list[str]
    stdin: bool = False  # whether the call sends stdin (`Call.send`)
    cwd: str | None = None
    env: dict[str, str] | None = None
    deadline: float | None = None  # time.monotonic() by which the output must have ended


class Transport(Protocol):
    def call(self, invocation: Invocation) -> Call:
        """Start the helper in the sandbox.

        Raises WorkspaceGone at once if the sandbox is gone, ProviderUnavailable if it cannot be
        reached.
        """


class HelperChannel:
    """Commands and files in one sandbox, through the helper, over `transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def probe(self) -> None:
        """Return once a command has run in the sandbox; ProviderError if none can."""
        call = self.transport.call(Invocation(["probe"], deadline=time.monotonic() + 60))
        try:
            output = b"".join(data for _, data in call.frames())
            code = call.exit_code()
        finally:
            call.close()
        if code != 0:
            raise ProviderError(f"the workspace started but cannot run commands (exit {code}): {output[-300:]!r}")

    def exec_stream(self, request: ExecRequest) -> Iterator[ExecEvent]:
        argv = ["run", "-m", str(request.output_limit)]
        deadline = None
        if request.timeout is not None:
            argv += ["-t", f"{request.timeout:g}"]
            deadline = time.monotonic() + request.timeout + HOST_GRACE_SECONDS
        started = time.monotonic()
        # Started here, not lazily, so that a missing workspace fails before any output is promised.
        call = self.transport.call(Invocation([*argv, "--", *request.argv], False, request.cwd, request.env, deadline))
        return _events(call, request.timeout, started)

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        call, reader, header = self._get(path)
        try:
            if header.startswith(b"F "):
                return _file_stat(header)
            return _parse_listing(b"".join(reader.body()))
        finally:
            call.close()

    def read_file(self, path: str) -> tuple[FileStat, Iterator[bytes]]:
        found = self.read(path)
        if isinstance(found, list):
            raise FileError("EISDIR", "Is a directory", path)
        return found

    def read(self, path: str) -> tuple[FileStat, Iterator[bytes]] | list[DirEntry]:
        """One `get`: a file's stat and bytes (streamed), or a directory's entries."""
        call, reader, header = self._get(path)
        if header.startswith(b"F "):
            return _file_stat(header), _checked(call, reader.body(), path)
        try:
            return _parse_listing(b"".join(reader.body()))
        finally:
            call.close()

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        call = self.transport.call(Invocation(["put", path, "-p", f"{mode:o}", "-s", str(size)], stdin=True))
        try:
            call.send(data)
            answer = b"".join(_stdout(call)).strip()
        finally:
            call.close()
        if not answer.startswith(b"OK"):
            _raise_helper_error(answer, path)
        return int(answer.split(b" ")[1])

    def read_archive(self, path: str) -> Iterator[bytes]:
        if not isinstance(self.stat(path), list):
            raise FileError("ENOTDIR", "Not a directory", path)
        call = self.transport.call(
            Invocation(["run", "-m", str(NO_LIMIT), "--", "tar", "-c", "-f", "-", "-C", path, "."])
        )
        return _closing(call, _stdout(call))

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        call = self.transport.call(Invocation(["mkdir", path]))
        try:
            answer = b"".join(_stdout(call)).strip()
        finally:
            call.close()
        if answer != b"OK":
            _raise_helper_error(answer, path)
        call = self.transport.call(
            Invocation(["run", "-i", "-m", "65536", "--", "tar", "-x", "-f", "-", "-C", path], stdin=True)
        )
        try:
            call.send(data)
            errors = b"".join(chunk for stream, chunk in call.frames() if stream == 2)
            code = call.exit_code()
        finally:
            call.close()
        if code != 0:
            message = errors.decode("utf-8", "replace").strip()[-1000:]
            raise BadRequest(f"unpacking the archive into {path} failed (tar exit {code}): {message}")

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        call = self.transport.call(Invocation(["watch", path, *(["-r"] if recursive else [])]))
        records = _records(_stdout(call))
        first = next(records, b"")
        if first != b"W":
            call.close()
            _raise_helper_error(first.strip(), path)
        return _closing(call, _watch_events(records))

    def connect(self, port: int) -> Tunnel:
        """A connection to `port` on the sandbox's loopback. ProviderError (502) when nothing listens there."""
        call = self.transport.call(Invocation(["connect", str(port)], stdin=True))
        reader = _HeaderReader(_stdout(call))
        answer = reader.header()
        if answer == b"OK":
            return Tunnel(call, reader.body())
        call.close()
        if answer.startswith(b"E ECONNREFUSED"):
            raise ProviderError(
                f"nothing listens on port {port} in the workspace: start a server there (on 0.0.0.0 or 127.0.0.1), "
                "or check its port"
            )
        raise ProviderError(f"port {port}: unexpected answer from the workspace helper: {answer[:200]!r}")

    def _get(self, path: str) -> tuple[Call, _HeaderReader, bytes]:
        call = self.transport.call(Invocation(["get", path]))
        reader = _HeaderReader(_stdout(call))
        header = reader.header()
        if header.startswith((b"F ", b"D")):
            return call, reader, header
        call.close()
        _raise_helper_error(header, path)
        raise AssertionError("unreachable")


def _events(call: Call, timeout: float | None, started: float) -> Iterator[ExecEvent]:
    try:
        try:
            for stream, data in call.frames():
                yield Output("stdout" if stream == 1 else "stderr", data)
        except TimeoutError:
            duration_ms = int((time.monotonic() - started) * 1000)
            yield Exit(exit_code=TIMEOUT_EXIT_CODE, timed_out=True, duration_ms=duration_ms)
            return
        code = call.exit_code()
        duration_ms = int((time.monotonic() - started) * 1000)
        timed_out = code == TIMEOUT_EXIT_CODE and timeout is not None and duration_ms >= timeout * 1000
        yield Exit(exit_code=code, timed_out=timed_out, duration_ms=duration_ms, signal=signal_of(code))
    finally:
        # Closing the call early makes the helper kill the command's process group.
        call.close()


def _records(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """NUL-ended records (or, when the helper could not start, its one error line)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\0")
        yield from complete
    if buffer:
        yield buffer


def _watch_events(records: Iterator[bytes]) -> Iterator[WatchEvent | None]:
    for record in records:
        kind, _, path = record.decode("utf-8", "replace").partition(" ")
        if not record:
            yield None  # the helper's every-2-s sign of life
        elif kind in WATCH_EVENT_TYPES:
            yield WatchEvent(cast(WatchEventType, kind), path)


def _stdout(call: Call) -> Iterator[bytes]:
    for stream, data in call.frames():
        if stream == 1:
            yield data


def _checked(call: Call, chunks: Iterator[bytes], path: str) -> Iterator[bytes]:
    """A file's bytes, and FileError at the end if the helper could not read all it announced: the file
    shrank while it was read (a rewrite under way), and the helper padded it to keep the framing."""
    try:
        yield from chunks
        if call.exit_code() != 0:
            raise FileError("EAGAIN", "it changed while it was read; read it again", path)
    finally:
        call.close()


def _closing(call: Call, chunks: Iterator[T]) -> Iterator[T]:
    try:
        yield from chunks
    finally:
        call.close()


class _HeaderReader:
    """Reads the helper's `get` answer: one header line, then a body."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.rest = b""

    def header(self) -> bytes:
        buffer = b""
        for chunk in self._chunks:
            buffer += chunk
            if b"\n" in buffer:
                line, self.rest = buffer.split(b"\n", 1)
                return line
        return buffer

    def body(self) -> Iterator[bytes]:
        if self.rest:
            yield self.rest
        yield from self._chunks


def _file_stat(header: bytes) -> FileStat:
    _, size, mode = header.split(b" ")
    return FileStat(size=int(size), mode=int(mode, 8))


def _raise_helper_error(line: bytes, path: str) -> None:
    if line.startswith(b"E "):
        _, errno_name, message = [*line.decode("utf-8", "replace").split(" ", 2), "", ""][:3]
        raise FileError(errno_name, message, path)
    raise ProviderError(f"{path}: unexpected answer from the workspace helper: {line[:200]!r}")


def _parse_listing(data: bytes) -> list[DirEntry]:
    entries = []
    for record in filter(None, data.split(b"\0")):
        kind, size, mode, mtime, name = record.split(b" ", 4)
        entries.append(
            DirEntry(
                name=name.decode("utf-8", "replace"),
                type=_TYPES.get(kind, "other"),
                size=int(size),
                mode=int(mode, 8),
                mtime=int(mtime),
            )
        )
    return entries
