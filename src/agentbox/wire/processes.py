"""The HTTP API's bodies for background processes and shell sessions (routes: api/processes.py, api/sessions.py)."""

from __future__ import annotations

import signal as signals
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agentbox.sandbox.process_table import (
    ProcessEnded,
    ProcessInfo,
    ProcessRequest,
    ProcessStatus,
    ProcessStream,
    TerminalSize,
)
from agentbox.wire.commands import ErrorEvent
from agentbox.wire.common import AbsolutePath, CommandLine, Env, NoNul, Seconds, argv_of


class TerminalSizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cols: int = Field(ge=1, le=1000)
    rows: int = Field(ge=1, le=1000)

    def to_size(self) -> TerminalSize:
        return TerminalSize(cols=self.cols, rows=self.rows)


class ProcessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: CommandLine = Field(description="a shell command run by /bin/sh -c, or an argv list run as is")
    cwd: AbsolutePath = "/workspace"
    env: Env = Field(default_factory=dict)
    stdin: bool = Field(False, description="keep its stdin open for POST .../stdin (a terminal always has one)")
    pty: TerminalSizeIn | None = Field(None, description="run it on a terminal of this size (one `pty` stream)")
    tag: str | None = Field(None, max_length=256, description="your own name for it, shown in the list")
    timeout: Seconds | None = Field(
        None, description="seconds after which it is killed (its whole process group), whether or not anyone watches"
    )

    def to_request(self) -> ProcessRequest:
        return ProcessRequest(
            argv=argv_of(self.command),
            cwd=self.cwd,
            env=dict(self.env),
            stdin=self.stdin,
            pty=self.pty.to_size() if self.pty else None,
            tag=self.tag,
            timeout=self.timeout,
        )


class TerminalSizeOut(BaseModel):
    cols: int
    rows: int


class ProcessOut(BaseModel):
    pid: int = Field(description="its PID inside the workspace")
    tag: str | None
    command: list[str]
    cwd: str
    status: ProcessStatus
    stdin: bool
    pty: TerminalSizeOut | None
    started_at: datetime | None
    exit_code: int | None = Field(description="None while it runs, and when a signal ended it")
    signal: str | None = Field(description='the signal that ended it, e.g. "SIGKILL"')
    ended_at: datetime | None
    timed_out: bool = Field(description="it was killed at its `timeout`")

    @classmethod
    def of(cls, info: ProcessInfo) -> ProcessOut:
        fields = vars(info) | {"pty": TerminalSizeOut(**vars(info.pty)) if info.pty else None}
        return cls(**fields)


class ProcessList(BaseModel):
    processes: list[ProcessOut]


def _signal_number(name: str) -> str:
    full = name if name.startswith("SIG") else f"SIG{name}"
    if full not in signals.Signals.__members__ or full in ("SIG_DFL", "SIG_IGN"):
        raise ValueError(f"{name!r} is not a signal: use a name such as SIGINT, SIGTERM, SIGKILL or SIGHUP")
    return full


class SignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signal: Annotated[str, Field(max_length=16), AfterValidator(_signal_number)] = Field(
        description='a signal name, e.g. "SIGINT"; it goes to the process\'s whole process group'
    )

    @property
    def number(self) -> int:
        return int(signals.Signals[self.signal])


class ProcessOutputEvent(BaseModel):
    """A piece of a process's output (a line of GET .../output)."""

    stream: ProcessStream
    offset: int = Field(description="bytes of the process's output before this piece")
    next_offset: int = Field(description="where to resume after this piece (?offset=)")
    data: str = Field(description="the bytes as UTF-8 text (invalid sequences replaced)")


class OutputDroppedEvent(BaseModel):
    """The output from `offset` up to `resumed_at` is no longer kept (only the newest 16 MiB are)."""

    dropped: Literal[True] = True
    offset: int
    resumed_at: int


class ProcessExitEvent(BaseModel):
    """How the process ended: the last line, once it has."""

    exit_code: int | None
    signal: str | None
    ended_at: datetime | None
    timed_out: bool = Field(False, description="it was killed at its `timeout`")

    @classmethod
    def of(cls, ended: ProcessEnded) -> ProcessExitEvent:
        return cls(exit_code=ended.exit_code, signal=ended.signal, ended_at=ended.ended_at, timed_out=ended.timed_out)


#: One line of GET .../processes/{pid}/output.
ProcessStreamEvent = ProcessOutputEvent | OutputDroppedEvent | ProcessExitEvent | ErrorEvent


def process_event(payload: Any) -> ProcessStreamEvent:
    """A line of GET .../output (parsed JSON) as its model, told apart by its keys.

    Raises ValueError (pydantic's ValidationError is one) for a line that is none of them.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"a line of the output is not a JSON object: {payload!r}")
    if "stream" in payload:
        return ProcessOutputEvent.model_validate(payload)
    if "dropped" in payload:
        return OutputDroppedEvent.model_validate(payload)
    if "exit_code" in payload:
        return ProcessExitEvent.model_validate(payload)
    return ErrorEvent.model_validate(payload)


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cwd: AbsolutePath = Field("/workspace", description="where its shell starts")
    env: Env = Field(default_factory=dict, description="added to the workspace's own environment")


class SessionOut(BaseModel):
    session_id: str = Field(description="its id: the PID of its shell in the workspace")
    cwd: str = Field(description="where it started (a later `cd` moves it)")
    status: ProcessStatus
    started_at: datetime | None

    @classmethod
    def of(cls, info: ProcessInfo) -> SessionOut:
        return cls(session_id=str(info.pid), cwd=info.cwd, status=info.status, started_at=info.started_at)


class SessionList(BaseModel):
    sessions: list[SessionOut]


class SessionRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: NoNul = Field(min_length=1, max_length=1 << 20, description="shell text, run by the session's bash")
    timeout: Seconds | None = Field(
        None,
        description="seconds before it is interrupted (^C, then SIGTERM); default 120, at most the server's "
        "WORKSPACE_EXEC_TIMEOUT",
    )


class SessionRunOut(BaseModel):
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="its status (130 when interrupted); null when the session was killed")
    duration_ms: int
    timed_out: bool = Field(description="true: it ran past `timeout` and was interrupted")
    stdout_truncated: bool
    stderr_truncated: bool
    session_ended: bool = Field(description="true: the shell is gone (`exit`, or a command that ignored ^C and TERM)")
