"""Shell sessions: a bash that keeps its directory, variables and functions from one command to the next.

A session is a background process (see agentbox.providers.processes) tagged as one, so it lives
in the workspace, survives a server restart and is found again by its PID. A command goes to
its stdin as one line that sources the command's text (so `cd`, `export`, functions and
`declare` act on the session's own shell) and then prints a marker with a fresh nonce on stdout
and stderr; the command's output is what its process wrote before the markers.

A command past its timeout is interrupted as ^C would: SIGINT to the session's process group,
which the shell's trap turns into "abandon this command" and which ends the command's children;
then SIGTERM; only a command that outlives both costs the session (SIGKILL).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from agentbox.errors import Conflict, NotFound
from agentbox.providers.base import close_stream
from agentbox.providers.processes import (
    OutputDropped,
    ProcessEnded,
    ProcessInfo,
    ProcessOutput,
    ProcessRequest,
    ProcessTable,
)

SESSION_TAG = "agentbox:session"
SHELL = ["bash", "--noprofile", "--norc"]
#: Set once at the start: a signal abandons the command being sourced, not the shell.
PREAMBLE = "trap 'return 130' INT TERM"
#: Seconds each interrupt (SIGINT, then SIGTERM) gets before the next, stronger one.
GRACE = 2.0
#: Seconds the session's first command (the preamble) may take.
START_SECONDS = 30.0
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass(frozen=True)
class SessionRun:
    stdout: str
    stderr: str
    exit_code: int | None  # None when the session itself ended by a signal
    duration_ms: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    session_ended: bool


def run_line(command: str, nonce: str) -> bytes:
    """The line that runs `command` in the shell and then marks its end, with its status, on both streams.

    The text comes as a here-string in ANSI-C quotes, which bash reads without starting a process
    (each costs milliseconds under gVisor); `source` reads all of it before running it, so the
    command's stdin is then at its end.
    """
    mark = rf"\036agentbox-{nonce}"
    return (f"source /dev/stdin <<< {ansi_c(command)}; printf '{mark} %d\\n' $?; printf '{mark}\\n' >&2\n").encode()


def ansi_c(text: str) -> str:
    """`text` as one bash word in ANSI-C quotes ($'...'), on one line whatever it holds."""
    escaped = []
    for char in text:
        if char in "\\'":
            escaped.append("\\" + char)
        elif char < " " or char == "\x7f":
            escaped.append(f"\\x{ord(char):02x}")
        else:
            escaped.append(char)
    return "$'" + "".join(escaped) + "'"


class MarkedOutput:
    """One stream of a run: the bytes before its end marker (the first `limit` of them), and the status."""

    def __init__(self, nonce: str, limit: int) -> None:
        self._marker = re.compile(rb"\x1eagentbox-" + nonce.encode() + rb"(?: (\d+))?\n")
        self._longest_marker = len(nonce) + 24
        self.limit = limit
        self.kept = bytearray()
        self.truncated = False
        self.done = False
        self.status: int | None = None
        self._held = b""  # what may be the start of the marker

    def feed(self, data: bytes) -> None:
        if self.done:
            return  # written after the run (a background job's): nobody's output
        window = self._held + data
        found = self._marker.search(window)
        if found is not None:
            self.done = True
            self.status = int(found.group(1)) if found.group(1) else None
            self._keep(window[: found.start()])
            return
        cut = max(len(window) - self._longest_marker, 0)
        self._keep(window[:cut])
        self._held = window[cut:]

    def text(self) -> str:
        if not self.done:
            self._keep(self._held)
        return self.kept.decode("utf-8", "replace")

    def _keep(self, data: bytes) -> None:
        room = self.limit - len(self.kept)
        if len(data) > room:
            self.truncated = True
        self.kept += data[: max(room, 0)]


class ShellSessions:
    """Every session this server has run commands in: where each one's output was read up to, and
    which one is running a command now (one command at a time per session)."""

    def __init__(self) -> None:
        self._read_to: dict[tuple[str, int], int] = {}
        self._busy: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def open(self, table: ProcessTable, workspace_id: str, cwd: str, env: dict[str, str]) -> ProcessInfo:
        """A new session, its shell started in `cwd` with `env`. BadRequest when there is no bash."""
        info = table.start(ProcessRequest(argv=SHELL, cwd=cwd, env=env, stdin=True, tag=SESSION_TAG))
        self.run(table, workspace_id, info.pid, PREAMBLE, START_SECONDS, limit=1 << 16)
        return info

    @staticmethod
    def list(table: ProcessTable) -> list[ProcessInfo]:
        """The sessions whose shell still runs."""
        return [p for p in table.list() if p.tag == SESSION_TAG and p.status == "running"]

    @staticmethod
    def get(table: ProcessTable, pid: int) -> ProcessInfo:
        """A session; NotFound for a PID that is not one, Conflict for one that has ended."""
        try:
            info = table.get(pid)
        except NotFound:
            info = None
        if info is None or info.tag != SESSION_TAG:
            raise NotFound(f"no session {pid} in this workspace: list them with GET .../sessions")
        if info.status != "running":
            ended = f"exit code {info.exit_code}" if info.exit_code is not None else info.signal
            raise Conflict(f"session {pid} has ended ({ended}): open a new one with POST .../sessions")
        return info

    def run(
        self, table: ProcessTable, workspace_id: str, pid: int, command: str, timeout: float, limit: int
    ) -> SessionRun:
        """Run `command` in the session and return its output once it is done, or interrupted after
        `timeout` seconds. Conflict while the session runs another command."""
        key = (workspace_id, pid)
        with self._claimed(key):
            offset = self._read_to.get(key)
            if offset is None:  # a session this server has not used yet (opened before a restart)
                self.get(table, pid)
                offset = _end_of_output(table, pid)
            nonce = secrets.token_hex(8)
            stdout, stderr = MarkedOutput(nonce, limit), MarkedOutput(nonce, limit)
            started = time.monotonic()
            try:
                table.write_stdin(pid, [run_line(command, nonce)])
            except Conflict:  # its shell has ended since: say how
                self.forget(workspace_id, pid)
                self.get(table, pid)
                raise
            finished = threading.Event()
            interrupts: list[int] = []
            threading.Thread(target=_interrupt, args=(table, pid, timeout, finished, interrupts), daemon=True).start()
            ended: ProcessEnded | None = None
            events = table.output(pid, offset, follow=True)
            try:
                for event in events:
                    if isinstance(event, ProcessOutput):
                        (stdout if event.stream == "stdout" else stderr).feed(event.data)
                        offset = event.offset + len(event.data)
                        if stdout.done and stderr.done:
                            break
                    elif isinstance(event, OutputDropped):
                        offset = event.resumed_at
                    elif isinstance(event, ProcessEnded):
                        ended = event
                        break
            finally:
                finished.set()
                close_stream(events)
            self._read_to[key] = offset
            if ended is not None:
                self.forget(workspace_id, pid)
            return SessionRun(
                stdout=stdout.text(),
                stderr=stderr.text(),
                exit_code=stdout.status if ended is None else ended.exit_code,
                duration_ms=int((time.monotonic() - started) * 1000),
                timed_out=bool(interrupts),
                stdout_truncated=stdout.truncated,
                stderr_truncated=stderr.truncated,
                session_ended=ended is not None,
            )

    def close(self, table: ProcessTable, workspace_id: str, pid: int) -> None:
        """End the session's shell and everything it started. NotFound for a PID that is not a session."""
        with contextlib.suppress(Conflict):  # it had ended already: what closing asks for is true
            self.get(table, pid)
            table.signal(pid, signal.SIGKILL)
        self.forget(workspace_id, pid)

    def forget(self, workspace_id: str, pid: int) -> None:
        self._read_to.pop((workspace_id, pid), None)

    @contextlib.contextmanager
    def _claimed(self, key: tuple[str, int]) -> Iterator[None]:
        with self._lock:
            if key in self._busy:
                raise Conflict(f"session {key[1]} is running a command: wait for it, or open another session")
            self._busy.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(key)


def _interrupt(table: ProcessTable, pid: int, timeout: float, finished: threading.Event, sent: list[int]) -> None:
    """At the deadline SIGINT, then SIGTERM, then SIGKILL, each after the last had its grace, until done."""
    for signum, wait in zip(_INTERRUPTS, (timeout, GRACE, GRACE), strict=True):
        if finished.wait(wait):
            return
        sent.append(signum)
        with contextlib.suppress(Conflict, NotFound):
            table.signal(pid, signum)


def _end_of_output(table: ProcessTable, pid: int) -> int:
    end = 0
    events = table.output(pid, 0, follow=False)
    try:
        for event in events:
            if isinstance(event, ProcessOutput):
                end = event.offset + len(event.data)
            elif isinstance(event, OutputDropped):
                end = event.resumed_at
    finally:
        close_stream(events)
    return end
