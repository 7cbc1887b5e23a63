"""The runtime's types: what a command, a file, a watch or a port connection takes and gives,
whoever carries it (the helper's channel, E2B's envd, a fake). Plain data, no I/O: providers,
the core and the faces all speak it, and it imports nothing of agentbox but errors.
"""

from __future__ import annotations

import codecs
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentbox.errors import ProviderError


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
