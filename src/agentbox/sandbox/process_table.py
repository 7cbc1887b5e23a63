"""Background processes: what a provider's process table takes and gives.

A background process lives in its workspace, not in the server: it keeps running when the
client that started it leaves and when the agentbox server restarts, and anyone with the
workspace finds it again by its PID (the real one inside the workspace). Its output is kept
in the workspace (at least the last `KEPT_OUTPUT` bytes) and read by byte offset, so that a
client resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

#: Output kept per process: at least this much of the newest (older output is dropped, and said so).
KEPT_OUTPUT = 16 << 20

ProcessStatus = Literal["running", "exited"]
ProcessStream = Literal["stdout", "stderr", "pty"]


@dataclass(frozen=True)
class TerminalSize:
    cols: int
    rows: int


@dataclass(frozen=True)
class ProcessRequest:
    argv: list[str]
    cwd: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    stdin: bool = False  # keep stdin open for `write_stdin` (a terminal always has one)
    pty: TerminalSize | None = None  # run it on a terminal of this size: one "pty" stream
    tag: str | None = None
    #: Seconds after which its whole process group is killed, by its supervisor in the sandbox: the
    #: deadline holds whether or not whoever asked for it is still there (None: none).
    timeout: float | None = None
    #: argv is one of agentbox's helper's own subcommands (`watch`), run by the helper's binary
    #: wherever the provider put it. Never set from a client's request: agentbox's own uses only.
    helper_subcommand: bool = False


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    command: list[str]
    cwd: str
    tag: str | None
    stdin: bool
    pty: TerminalSize | None
    status: ProcessStatus
    started_at: datetime | None
    exit_code: int | None = None  # None while running, and when it was killed by a signal
    signal: str | None = None  # e.g. "SIGKILL"; "SIGKILL" too for what the workspace's stop ended
    ended_at: datetime | None = None
    timed_out: bool = False  # killed at its `timeout`


@dataclass(frozen=True)
class ProcessOutput:
    stream: ProcessStream
    offset: int  # bytes of output before this chunk
    data: bytes


@dataclass(frozen=True)
class OutputDropped:
    """The output asked for from `offset` was dropped (over `KEPT_OUTPUT`); it goes on at `resumed_at`."""

    offset: int
    resumed_at: int


@dataclass(frozen=True)
class ProcessEnded:
    exit_code: int | None
    signal: str | None
    ended_at: datetime | None
    timed_out: bool = False


ProcessEvent = ProcessOutput | OutputDropped | ProcessEnded


class ProcessTable(Protocol):
    """The background processes of one workspace.

    Every method raises ProcessNotFound for a PID that names no process of this workspace,
    WorkspaceGone when the sandbox is gone and ProviderUnavailable when it cannot be reached.
    """

    def start(self, request: ProcessRequest) -> ProcessInfo:
        """Start it and return once it runs. BadRequest when it cannot be started (no such program)."""

    def list(self) -> list[ProcessInfo]:
        """Every process started in the workspace (running, or exited and not yet removed)."""

    def get(self, pid: int) -> ProcessInfo: ...

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        """Its output from byte `offset` (OutputDropped first if some of that is gone), then ProcessEnded
        if it has ended. With `follow`, waits for more until it ends (the caller closes the iterator
        to stop earlier), with a None after every few seconds in which nothing came: the caller's
        chance to notice that its own client left."""

    def write_stdin(self, pid: int, data: Iterable[bytes]) -> int:
        """Send `data` to its stdin; the bytes sent. Conflict when it has no stdin or closed it."""

    def close_stdin(self, pid: int) -> None:
        """End its stdin (on a terminal: an end-of-file character)."""

    def signal(self, pid: int, signum: int) -> None:
        """Send `signum` to its process group; with SIGKILL, return once the group is empty.
        Conflict when it has already exited."""

    def resize(self, pid: int, size: TerminalSize) -> None:
        """Resize its terminal. Conflict when it runs without one."""
