"""The bodies of a command run in a workspace (routes: api/commands.py): how to run it, how it ended, and
the lines of its streamed output (POST .../exec/stream).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentbox.wire.common import AbsolutePath, CommandLine, Env, Seconds, argv_of
from agentbox.wire.domain import Command


class ExecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: CommandLine = Field(description="a shell command run by /bin/sh -c, or an argv list run as is")
    timeout: Seconds | None = Field(
        None,
        description="seconds; the command's process group is killed after it (default: the server's "
        "WORKSPACE_EXEC_TIMEOUT, one hour)",
    )
    cwd: AbsolutePath = "/workspace"
    env: Env = Field(default_factory=dict)

    def to_command(self) -> Command:
        return Command(argv=argv_of(self.command), cwd=self.cwd, env=dict(self.env), timeout=self.timeout)


class ExecOut(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    signal: str | None = Field(
        default=None, description='the signal that killed the command, e.g. "SIGKILL" (memory limit)'
    )


class OutputEvent(BaseModel):
    """A piece of a streamed command's output (a line of POST .../exec/stream)."""

    stream: Literal["stdout", "stderr"]
    data: str


class ExitEvent(BaseModel):
    """How a streamed command ended: its last line, after all of its output."""

    exit_code: int
    timed_out: bool
    duration_ms: int
    signal: str | None = Field(
        default=None, description='the signal that killed the command, e.g. "SIGKILL" (memory limit)'
    )
    stdout_truncated: bool
    stderr_truncated: bool


class ErrorEvent(BaseModel):
    """Why a streamed command could not go on: its last line, instead of an exit."""

    error: str


#: One line of POST .../exec/stream.
ExecStreamEvent = OutputEvent | ExitEvent | ErrorEvent
