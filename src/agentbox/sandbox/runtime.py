"""The runtime: what reaches inside one sandbox, apart from where the sandbox runs.

SWE-ReX's split: a provider (providers/base.py) is the *deployment*, which makes, starts, stops
and finds sandboxes; `Runtime` is what reaches inside one of them once it runs: commands, files,
archives, watches, port connections, background processes. `Provider.runtime(ref)` hands one out
and the core (workspaces/handle.py) talks to it. The runtimes that exist: the helper's channel
over any transport (`sandbox/channel.HelperChannel`: Docker's Unix socket, TCP or Engine API
exec, and any other way to start the helper), E2B's (`providers/e2b/runtime.py`: its SDK, and the
same helper over E2B's commands), and the unit tests' in-memory one (tests/fake_provider.py).

Here too are the types a runtime takes and gives, whoever carries them: plain data, no I/O, which
providers, the core and the faces all speak. It imports nothing of agentbox but errors.
"""

from __future__ import annotations

import abc
import codecs
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentbox.errors import ProviderError
from agentbox.sandbox.process_table import ProcessTable


@dataclass(frozen=True)
class ExecRequest:
    argv: list[str]
    cwd: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    output_limit: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class Output:
    stream: Literal["stdout", "stderr"]
    data: bytes


#: A command killed at its deadline exits with this, as under timeout(1).
TIMEOUT_EXIT_CODE = 124


@dataclass(frozen=True)
class Exit:
    exit_code: int
    timed_out: bool
    duration_ms: int
    #: The signal that killed the command ("SIGKILL" when the memory limit was hit), if one did.
    signal: str | None = None


def signal_of(exit_code: int) -> str | None:
    """The shell's convention: 128 + n means "killed by signal n"."""
    if 128 < exit_code <= 128 + 64:
        try:
            return signal.Signals(exit_code - 128).name
        except ValueError:
            return f"SIG{exit_code - 128}"
    return None


ExecEvent = Output | Exit


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    signal: str | None = None


EntryType = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class DirEntry:
    name: str
    type: EntryType
    size: int
    mode: int
    mtime: int


@dataclass(frozen=True)
class FileStat:
    size: int
    mode: int


WatchEventType = Literal["create", "write", "remove", "rename", "chmod"]


@dataclass(frozen=True)
class WatchEvent:
    type: WatchEventType
    path: str


class PortConnection(Protocol):
    """A TCP connection to a server inside a workspace. Reads and writes may come from two threads."""

    def read(self) -> bytes:
        """The next bytes the server sent; b"" once it has closed its side."""

    def write(self, data: bytes) -> None: ...

    def end_input(self) -> None:
        """Nothing more will be written (the server reads an end of input)."""

    def close(self) -> None: ...


def close_stream(stream: Iterator[Any]) -> None:
    """End a stream whose rest is not wanted: closing a provider's iterator ends what feeds it (a command,
    a follower), where dropping it would leave that to the garbage collector."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


class OutputLimit:
    """Keeps at most `limit` bytes of each output stream and remembers which ones lost bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = {"stdout": 0, "stderr": 0}
        self.truncated = {"stdout": False, "stderr": False}

    def take(self, output: Output) -> bytes:
        room = max(self.limit - self.kept[output.stream], 0)
        if len(output.data) > room:
            self.truncated[output.stream] = True
        piece = output.data[:room]
        self.kept[output.stream] += len(piece)
        return piece


def collect(events: Iterable[ExecEvent], limit: int) -> ExecResult:
    """Gather an exec's events into one result, keeping at most `limit` bytes per stream."""
    kept = OutputLimit(limit)
    # One growing buffer per stream, not a list joined at the end: a flood costs `limit`, not twice it.
    buffers = {"stdout": bytearray(), "stderr": bytearray()}
    exit_event: Exit | None = None
    for event in events:
        if isinstance(event, Exit):
            exit_event = event
        else:
            buffers[event.stream] += kept.take(event)
    if exit_event is None:
        raise ProviderError("the command's output ended without an exit status; run it again")
    return ExecResult(
        exit_code=exit_event.exit_code,
        stdout=_text(buffers.pop("stdout")),
        stderr=_text(buffers.pop("stderr")),
        duration_ms=exit_event.duration_ms,
        timed_out=exit_event.timed_out,
        stdout_truncated=kept.truncated["stdout"],
        stderr_truncated=kept.truncated["stderr"],
        signal=exit_event.signal,
    )


def _text(buffer: bytearray) -> str:
    text = buffer.decode("utf-8", "replace")
    buffer.clear()
    return text


class TextDecoder:
    """Decode a byte stream to text chunk by chunk, never splitting a UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def decode(self, data: bytes, final: bool = False) -> str:
        return self._decoder.decode(data, final)


class Runtime(abc.ABC):
    """What reaches inside one running sandbox: commands, files, archives, watches, ports, processes.

    Every method blocks (callers run it off the event loop) and reaches the sandbox at the call,
    never before: making a runtime costs nothing, and a sandbox gone since fails its first call.
    Every method may raise WorkspaceGone (410) when the sandbox is gone, ProviderUnavailable (503)
    when what runs it cannot be reached (the engine, E2B), and ProviderError (502) when the sandbox
    cannot take the call (stopped since, say) or what answers in it is not what should (the helper
    replaced by a workload: `channel.HelperMalformed`).
    Methods that take a path raise FileError for what the sandbox's kernel refused (its errno: 404
    for ENOENT, 403 for EACCES, 507 for ENOSPC, ...). A runtime that cannot do something at all
    (a fake's ports) raises BadRequest (400); the provider's `Capabilities` say beforehand.
    """

    @abc.abstractmethod
    def exec_stream(self, request: ExecRequest) -> Iterator[ExecEvent]:
        """Run a command; yield its output as it arrives, then one `Exit`.

        The command starts at the call, so that a sandbox that is gone fails here, before any output
        is promised. Closing the iterator early kills the command (and its process group). A program
        that is not there is an exit code (127), as is a command killed at its deadline (124, with
        `timed_out`); a working directory that does not exist is BadRequest, at the call or on the
        first read depending on the way in.
        """

    def exec(self, request: ExecRequest) -> ExecResult:
        """Run a command to its end; at most `request.output_limit` bytes kept per stream (the rest
        dropped, and said so in `stdout_truncated`/`stderr_truncated`)."""
        return collect(self.exec_stream(request), request.output_limit)

    @abc.abstractmethod
    def stat(self, path: str) -> FileStat | list[DirEntry]:
        """A file's size and mode, or a directory's entries. FileError (ENOENT...) for a path that
        cannot be looked at; ProviderError for a directory too big to list at once."""

    @abc.abstractmethod
    def read_file(self, path: str) -> tuple[FileStat, Iterator[bytes]]:
        """A file's size and mode, and its bytes as they come. FileError EISDIR for a directory; through
        the helper, FileError EAGAIN (while iterating) when it changed while it was read."""

    def read(self, path: str) -> tuple[FileStat, Iterator[bytes]] | list[DirEntry]:
        """A file's size, mode and bytes, or a directory's entries: `stat` and `read_file` in one look."""
        found = self.stat(path)
        return found if isinstance(found, list) else self.read_file(path)

    @abc.abstractmethod
    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        """Write exactly `size` bytes from `data` to `path`, atomically: all of it or nothing; the bytes
        written. FileError for a path that cannot be written (ENOENT for a missing directory, ENOSPC
        for a full disk, ...); nothing is written when `data` is not `size` bytes long."""

    @abc.abstractmethod
    def read_archive(self, path: str) -> Iterator[bytes]:
        """A tar stream of the directory `path`. FileError (ENOTDIR, ENOENT) for a path that is not a
        directory, or BadRequest with tar's own words where the runtime lets tar find out (E2B's)."""

    @abc.abstractmethod
    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        """Unpack a tar stream into the directory `path`, creating it if needed. FileError (or BadRequest,
        where a shell makes it: E2B's) when the directory cannot be made; BadRequest when tar refuses the
        archive (what it said, in the detail)."""

    @abc.abstractmethod
    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        """Events under the directory `path` from now on, until the iterator is closed (or the directory
        goes), and a None after every few seconds in which nothing happened: the caller's chance to notice
        that its own client left, and close the iterator, when nothing would happen for hours. Returns
        once the watch is in place; FileError for a path that is not a directory."""

    @abc.abstractmethod
    def connect(self, port: int) -> PortConnection:
        """A connection to `port` on the sandbox's own loopback, whatever its network policy (previews).
        ProviderError (502) when nothing listens there."""

    @abc.abstractmethod
    def processes(self) -> ProcessTable:
        """The sandbox's background processes (what each of the table's methods raises: `ProcessTable`).
        Making the table reaches nothing; its calls do."""
