"""The one way into a sandbox: `agentbox-exec`'s wire protocol, over any transport.

A provider that can start the helper in its sandbox (with arguments, stdin, and stdout and
stderr kept apart) gives a `Transport`; `HelperChannel` turns that into a `Runtime` (commands,
files, archives, watches, ports, and background processes through processes.py). The Docker
provider's transports are the helper's Unix socket, TCP and the Engine API's exec; E2B's is its
command API; a Kubernetes one would be TCP or the pod exec API. What the helper answers is
defined by run.c, files.c and main.c (probe):

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

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NoReturn, Protocol, TypeVar, cast, get_args

from agentbox.errors import BadRequest, FileError, ProviderError
from agentbox.sandbox.process_table import ProcessTable
from agentbox.sandbox.runtime import (
    TIMEOUT_EXIT_CODE,
    DirEntry,
    EntryType,
    ExecEvent,
    ExecRequest,
    Exit,
    FileStat,
    Output,
    Runtime,
    WatchEvent,
    WatchEventType,
    signal_of,
)
from agentbox.sandbox.tunnel import Tunnel

# If the helper itself is wedged, the host gives up this long after the command's deadline.
HOST_GRACE_SECONDS = 10.0
#: Seconds of silence after which a call that answers at once (a file, a listing, the process table)
#: fails: far past what a genuine helper takes, even on a loaded host.
IDLE_SECONDS = 60.0
NO_LIMIT = 1 << 62

# What the helper answers is untrusted (a workload can put its own listener on the control
# socket, control.py), so every part of an answer is read within a bound, far above what the
# genuine helper (run.c, files.c, watch.c, connect.c) sends: a helper past one fails its call
# (HelperMalformed), and a call never holds more than its bound.

#: A line: a `get` or `connect` header ("F <size> <mode>", "D", "OK", "E <ERRNO> <message>") or
#: an answer such as "OK <bytes>". The helper's are under 300 bytes (the message is strerror's,
#: or a short sentence of its own).
MAX_LINE = 16 << 10
#: Answers gathered whole: a probe's two lines, tar's complaints (its run is capped at TAR_ERRORS).
MAX_ANSWER = 1 << 20
TAR_ERRORS = 64 << 10
#: One directory entry, "<type> <size> <mode> <mtime> <name>": four numbers and a name of at most
#: NAME_MAX (255) bytes.
MAX_ENTRY = 4 << 10
#: A listing is answered as one document, so it is held whole: bounded, generously since a real
#: directory can be big. 50,000 entries take about 12 MiB here once parsed; 16 MiB of listing is
#: that many entries with names of 300 bytes.
MAX_ENTRIES = 50_000
MAX_LISTING_BYTES = 16 << 20
#: One watch event, "<type> <path>": paths are at most PATH_MAX (4096) bytes.
MAX_WATCH_RECORD = 16 << 10
#: The helper's own messages (a command that cannot start, the memory limit) go to stderr past
#: the output cap a command's run was given (`run -m`, which forwards up to the cap plus a byte).
HELPER_MESSAGES = 64 << 10

_FILE_HEADER = re.compile(rb"F (\d{1,20}) ([0-7]{1,7})")
_ENTRY = re.compile(rb"([fdlo]) (-?\d{1,20}) ([0-7]{1,7}) (-?\d{1,20}) (.+)", re.DOTALL)
_WRITTEN = re.compile(rb"OK (\d{1,20})")
_TYPES: dict[bytes, EntryType] = {b"f": "file", b"d": "dir", b"l": "symlink", b"o": "other"}
WATCH_EVENT_TYPES = set(get_args(WatchEventType))
T = TypeVar("T")


class HelperMalformed(ProviderError):
    """The helper answered what agentbox's helper never sends: only this call fails."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the workspace's helper sent {what}, which agentbox's helper never does: something in the workspace may "
            "have replaced it. Stop and start the workspace (its files are kept); if it happens again, check what "
            "runs in it"
        )


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
    #: Seconds the answer may go silent before the call fails: a helper that says its hello and then
    #: nothing must not hold a worker thread for ever. None for calls that wait by design (watch,
    #: follow, connect), whose genuine helper sends keep-alives or whose silence is the app's.
    idle: float | None = None


class Transport(Protocol):
    def call(self, invocation: Invocation) -> Call:
        """Start the helper in the sandbox.

        Raises WorkspaceGone at once if the sandbox is gone, ProviderUnavailable if it cannot be
        reached.
        """


class HelperChannel(Runtime):
    """The runtime of one sandbox through the helper, over `transport`: every call starts the helper
    there once (`Transport.call`), so making a channel reaches nothing."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def processes(self) -> ProcessTable:
        """The helper's process table in the sandbox (processes.c), over the same transport."""
        # Imported here: processes.py reads the helper's answers with this module's readers.
        from agentbox.sandbox.processes import HelperProcesses

        return HelperProcesses(self.transport)

    def probe(self) -> None:
        """Return once a command has run in the sandbox; ProviderError if none can."""
        call = self.transport.call(Invocation(["probe"], deadline=time.monotonic() + 60))
        try:
            output = _gather((data for _, data in call.frames()), MAX_ANSWER, "a probe's answer")
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
        return _events(call, request.timeout, started, request.output_limit)

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        call, reader, header = self._get(path)
        try:
            if header.startswith(b"F "):
                return _file_stat(header)
            return _listing(reader, path)
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
        if not header.startswith(b"F "):
            try:
                return _listing(reader, path)
            finally:
                call.close()
        try:
            stat = _file_stat(header)
        except BaseException:
            call.close()
            raise
        return stat, _checked(call, reader.rest(), stat.size, path)

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        call = self.transport.call(
            Invocation(["put", path, "-p", f"{mode:o}", "-s", str(size)], stdin=True, idle=IDLE_SECONDS)
        )
        try:
            call.send(data)
            answer = _gather(_stdout(call), MAX_LINE, "an answer to a write").strip()
        finally:
            call.close()
        written = _WRITTEN.fullmatch(answer)
        if written is None:
            raise_helper_error(answer, path)
            raise AssertionError("unreachable")
        return int(written[1])

    def read_archive(self, path: str) -> Iterator[bytes]:
        if not isinstance(self.stat(path), list):
            raise FileError("ENOTDIR", "Not a directory", path)
        call = self.transport.call(
            Invocation(["run", "-m", str(NO_LIMIT), "--", "tar", "-c", "-f", "-", "-C", path, "."], idle=IDLE_SECONDS)
        )
        return _closing(call, _stdout(call))

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        call = self.transport.call(Invocation(["mkdir", path], idle=IDLE_SECONDS))
        try:
            answer = _gather(_stdout(call), MAX_LINE, "an answer to mkdir").strip()
        finally:
            call.close()
        if answer != b"OK":
            raise_helper_error(answer, path)
        call = self.transport.call(
            Invocation(
                ["run", "-i", "-m", str(TAR_ERRORS), "--", "tar", "-x", "-f", "-", "-C", path],
                stdin=True,
                idle=IDLE_SECONDS,
            )
        )
        try:
            call.send(data)
            stderr = (chunk for stream, chunk in call.frames() if stream == 2)
            errors = _gather(stderr, TAR_ERRORS + 1 + HELPER_MESSAGES, "more of tar's errors than its run allows")
            code = call.exit_code()
        finally:
            call.close()
        if code != 0:
            message = errors.decode("utf-8", "replace").strip()[-1000:]
            raise BadRequest(f"unpacking the archive into {path} failed (tar exit {code}): {message}")

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        call = self.transport.call(Invocation(["watch", path, *(["-r"] if recursive else [])]))
        records = _records(_stdout(call))
        try:
            first = next(records, b"")
        except BaseException:
            call.close()
            raise
        if first != b"W":
            call.close()
            raise_helper_error(first.strip(), path)
        return _closing(call, watch_events(records))

    def connect(self, port: int) -> Tunnel:
        """A connection to `port` on the sandbox's loopback. ProviderError (502) when nothing listens there."""
        call = self.transport.call(Invocation(["connect", str(port)], stdin=True))
        reader = AnswerReader(_stdout(call))
        try:
            answer = reader.line()
        except BaseException:
            call.close()
            raise
        if answer == b"OK":
            return Tunnel(call, reader.rest())
        call.close()
        if answer.startswith(b"E ECONNREFUSED"):
            raise ProviderError(
                f"nothing listens on port {port} in the workspace: start a server there (on 0.0.0.0 or 127.0.0.1), "
                "or check its port"
            )
        raise HelperMalformed(f"an unexpected answer to connecting to port {port} ({answer[:200]!r})")

    def _get(self, path: str) -> tuple[Call, AnswerReader, bytes]:
        call = self.transport.call(Invocation(["get", path], idle=IDLE_SECONDS))
        reader = AnswerReader(_stdout(call))
        try:
            header = reader.line()
        except BaseException:
            call.close()
            raise
        if header == b"D" or header.startswith(b"F "):
            return call, reader, header
        call.close()
        raise_helper_error(header, path)
        raise AssertionError("unreachable")


def _events(call: Call, timeout: float | None, started: float, limit: int) -> Iterator[ExecEvent]:
    # The helper forwards at most `limit` + 1 bytes of each stream (the extra byte says "truncated"),
    # then its own messages: a helper that sends more is not ours, and nothing past that is passed on.
    allowed = limit + 1 + HELPER_MESSAGES
    sent = {"stdout": 0, "stderr": 0}
    try:
        try:
            for stream, data in call.frames():
                name: Literal["stdout", "stderr"] = "stdout" if stream == 1 else "stderr"
                sent[name] += len(data)
                if sent[name] > allowed:
                    raise HelperMalformed(f"more {name} than the {limit} bytes the command's run was allowed")
                yield Output(name, data)
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


def _records(chunks: Iterator[bytes], limit: int = MAX_WATCH_RECORD) -> Iterator[bytes]:
    """NUL-ended records of at most `limit` bytes (or, when the helper could not start, its one error line)."""
    reader = AnswerReader(chunks)
    while (record := reader.until(b"\0", limit, "a watch event")) is not None:
        yield record


def watch_events(records: Iterator[bytes]) -> Iterator[WatchEvent | None]:
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


def _checked(call: Call, chunks: Iterator[bytes], size: int, path: str) -> Iterator[bytes]:
    """A file's `size` bytes, and FileError at the end if the helper could not read all it announced: the
    file shrank while it was read (a rewrite under way), and the helper padded it to keep the framing.
    Never a byte past `size`, and never fewer without an error."""
    try:
        left = size
        for chunk in chunks:
            if len(chunk) > left:
                raise HelperMalformed(f"more of {path} than the {size} bytes it announced")
            left -= len(chunk)
            yield chunk
        code = call.exit_code()
        if code != 0:
            raise FileError("EAGAIN", "it changed while it was read; read it again", path)
        if left:
            raise HelperMalformed(f"{size - left} bytes of {path} where it announced {size}")
    finally:
        call.close()


def _closing(call: Call, chunks: Iterator[T]) -> Iterator[T]:
    try:
        yield from chunks
    finally:
        call.close()


class AnswerReader:
    """The helper's stdout read as lines, NUL-ended records or blocks of a given size, each within a bound.

    It holds at most the bound asked for plus one piece of output, and copies each byte a fixed
    number of times however the output was cut (no `buffer += chunk` over a whole answer).
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    def line(self) -> bytes:
        """The next line (MAX_LINE at most), without its newline; at the end, what is left (maybe b"")."""
        return self.until(b"\n", MAX_LINE, "a line") or b""

    def until(self, end: bytes, limit: int, what: str) -> bytes | None:
        """The bytes before the next `end` (which is taken too); at the end of the answer, what is left,
        or None when nothing is. HelperMalformed when `limit` bytes pass without `end`."""
        searched = 0
        while (found := self._buffer.find(end, searched)) < 0:
            if len(self._buffer) > limit:
                raise HelperMalformed(f"{what} longer than {limit} bytes")
            searched = len(self._buffer)
            if not self._more():
                return self._take(len(self._buffer)) if self._buffer else None
        if found > limit:
            raise HelperMalformed(f"{what} longer than {limit} bytes")
        data = self._take(found)
        del self._buffer[: len(end)]
        return data

    def exactly(self, size: int) -> bytes | None:
        """The next `size` bytes (bounded by the caller), or None when the answer ends first."""
        while len(self._buffer) < size:
            if not self._more():
                return None
        return self._take(size)

    def rest(self) -> Iterator[bytes]:
        """What is left of the answer, as it comes."""
        if self._buffer:
            yield self._take(len(self._buffer))
        yield from self._chunks

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer += chunk
                return True
        return False

    def _take(self, size: int) -> bytes:
        with memoryview(self._buffer) as view:
            data = bytes(view[:size])
        del self._buffer[:size]
        return data


def _gather(chunks: Iterable[bytes], limit: int, what: str) -> bytes:
    """A short answer whole; HelperMalformed past `limit` bytes."""
    gathered = bytearray()
    for chunk in chunks:
        gathered += chunk
        if len(gathered) > limit:
            raise HelperMalformed(f"{what} longer than {limit} bytes")
    return bytes(gathered)


def _file_stat(header: bytes) -> FileStat:
    found = _FILE_HEADER.fullmatch(header)
    if found is None:
        raise HelperMalformed(f"a malformed file header ({header[:200]!r})")
    return FileStat(size=int(found[1]), mode=int(found[2], 8))


def raise_helper_error(line: bytes, path: str) -> NoReturn:
    """The helper's error line about `path` as FileError; HelperMalformed for anything else."""
    if line.startswith(b"E "):
        _, errno_name, message = [*line.decode("utf-8", "replace").split(" ", 2), "", ""][:3]
        raise FileError(errno_name, message, path)
    raise HelperMalformed(f"an unexpected answer about {path} ({line[:200]!r})")


def _listing(reader: AnswerReader, path: str) -> list[DirEntry]:
    """A directory's entries, parsed as they come: within MAX_ENTRIES and MAX_LISTING_BYTES."""
    entries: list[DirEntry] = []
    total = 0
    while (record := reader.until(b"\0", MAX_ENTRY, "a directory entry")) is not None:
        total += len(record) + 1
        if not record:
            continue
        if len(entries) == MAX_ENTRIES or total > MAX_LISTING_BYTES:
            raise ProviderError(
                f"{path}: the directory has more than {MAX_ENTRIES} entries (or {MAX_LISTING_BYTES >> 20} MiB of "
                "listing), more than agentbox lists at once: list its subdirectories, or run `ls` or `find` in it "
                "through exec"
            )
        entries.append(_entry(record))
    return entries


def _entry(record: bytes) -> DirEntry:
    found = _ENTRY.fullmatch(record)
    if found is None:
        raise HelperMalformed(f"a malformed directory entry ({record[:200]!r})")
    kind, size, mode, mtime, name = found.groups()
    return DirEntry(
        name=name.decode("utf-8", "replace"),
        type=_TYPES[kind],
        size=int(size),
        mode=int(mode, 8),
        mtime=int(mtime),
    )
