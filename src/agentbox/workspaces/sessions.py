"""Shell sessions: a bash that keeps its directory, variables and functions from one command to the next.

A session is a background process (see agentbox.sandbox.process_table) tagged as one, so it lives
in the workspace, survives a server restart and is found again by its PID. A command goes to
its stdin as one line that sources the command's text (so `cd`, `export`, functions and
`declare` act on the session's own shell) and then prints a marker with a fresh nonce on stdout
and stderr; the command's output is what its process wrote before the markers.

A command past its timeout is interrupted as ^C would: SIGINT to the session's process group,
which the shell's trap turns into "abandon this command" and which ends the command's children;
then SIGTERM; only a command that outlives both costs the session (SIGKILL).

Replicas share a session through the database (agentbox.workspaces.session_claims): which one runs a command
in it now, where its output was read up to, and the marker of a command whose end nobody read.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from agentbox.errors import Conflict, NotFound
from agentbox.sandbox.process_table import (
    OutputDropped,
    ProcessEnded,
    ProcessInfo,
    ProcessOutput,
    ProcessRequest,
    ProcessTable,
)
from agentbox.sandbox.runtime import close_stream
from agentbox.workspaces.session_claims import RENEW_EVERY, SessionClaims

log = logging.getLogger("agentbox.workspaces.sessions")

SESSION_TAG = "agentbox:session"
SHELL = ["bash", "--noprofile", "--norc"]
#: Set once at the start: a signal abandons the command being sourced, not the shell; one that finds
#: the shell idle (another replica's interrupt of a command that had just ended) leaves no trace.
PREAMBLE = "trap 'return 130 2>/dev/null' INT TERM"
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


def _marker(nonce: str) -> re.Pattern[bytes]:
    return re.compile(rb"\x1eagentbox-" + nonce.encode() + rb"(?: (\d+))?\n")


class MarkedOutput:
    """One stream of a run: the bytes before its end marker (the first `limit` of them), and the status.

    `previous`: the marker of a command written before this one whose end nobody read (its replica
    died): what comes up to that marker is the earlier command's, not this one's. If it never comes
    (that command never reached the shell), everything before this run's marker is this run's."""

    def __init__(self, nonce: str, limit: int, previous: str | None = None) -> None:
        self._marker = _marker(nonce)
        self._previous = _marker(previous) if previous else None
        self._longest_marker = max(len(nonce), len(previous or "")) + 24
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
        if self._previous is not None:
            earlier = self._previous.search(window)
            if earlier is not None:
                self._previous = None
                self.kept.clear()
                self.truncated = False
                window = window[earlier.end() :]
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
    """The shell sessions of every workspace, as this replica runs commands in them. What the replicas
    share (where each session's output was read up to, which replica runs a command in it now) is in
    the database (agentbox.workspaces.session_claims), so a session opened through one replica is used through
    any other, one command at a time whichever replica it comes through."""

    def __init__(self, claims: SessionClaims) -> None:
        self.claims = claims

    def open(self, table: ProcessTable, workspace_id: str, cwd: str, env: dict[str, str]) -> ProcessInfo:
        """A new session, its shell started in `cwd` with `env`. BadRequest when there is no bash."""
        info = table.start(ProcessRequest(argv=SHELL, cwd=cwd, env=env, stdin=True, tag=SESSION_TAG))
        nonce = secrets.token_hex(8)
        self.claims.fresh(workspace_id, info.pid, nonce)
        self._run(table, workspace_id, info.pid, PREAMBLE, START_SECONDS, 1 << 16, nonce, 0)
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
        `timeout` seconds. Conflict while the session runs another command (through any replica)."""
        nonce = secrets.token_hex(8)
        claim = self.claims.take(workspace_id, pid, nonce)
        if claim.read_to is not None and claim.pending is None:
            return self._run(table, workspace_id, pid, command, timeout, limit, nonce, claim.read_to)
        try:
            if claim.read_to is None:  # a session no replica has recorded: its output so far is nobody's
                self.get(table, pid)
                read_to = _end_of_output(table, pid)
            else:
                read_to = claim.read_to
                if not _ended(table, pid, read_to, claim.pending):
                    # The command of a replica that died is still running (or never reached the shell):
                    # nobody waits for it any more, so it is interrupted as ^C would, as at its timeout.
                    with contextlib.suppress(Conflict, NotFound):
                        table.signal(pid, signal.SIGINT)
            self.claims.begin(workspace_id, pid, nonce, read_to)
        except (NotFound, Conflict):
            self.forget(workspace_id, pid)  # not a session, or one that has ended
            raise
        except BaseException:
            self.claims.release(workspace_id, pid, None, claim.pending)
            raise
        return self._run(table, workspace_id, pid, command, timeout, limit, nonce, read_to, claim.pending)

    def _run(
        self,
        table: ProcessTable,
        workspace_id: str,
        pid: int,
        command: str,
        timeout: float,
        limit: int,
        nonce: str,
        offset: int,
        previous: str | None = None,
    ) -> SessionRun:
        """Run `command` in a session this replica holds, whose output from `offset` is the command's (once
        past `previous`'s marker, if that comes), with `nonce` recorded as its marker; let it go after."""
        stdout, stderr = MarkedOutput(nonce, limit, previous), MarkedOutput(nonce, limit, previous)
        started = time.monotonic()
        try:
            table.write_stdin(pid, [run_line(command, nonce)])
        except Conflict:  # its shell has ended since: say how
            self.forget(workspace_id, pid)
            self.get(table, pid)
            raise
        except BaseException:
            # Maybe written, maybe not: the next command finds out from the marker (see MarkedOutput).
            self.claims.release(workspace_id, pid, None, nonce)
            raise
        finished = threading.Event()
        interrupts: list[int] = []
        watch = (table, self.claims, workspace_id, pid, timeout, finished, interrupts)
        threading.Thread(target=_watch, args=watch, daemon=True).start()
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
        except BaseException:
            # Its end was not read: the next command skips to its marker.
            self.claims.release(workspace_id, pid, None, nonce)
            raise
        finally:
            finished.set()
            close_stream(events)
        if ended is not None:
            self.forget(workspace_id, pid)
        else:  # a stream that stopped short of the markers leaves the rest for the next command to skip
            self.claims.release(workspace_id, pid, offset, None if stdout.done and stderr.done else nonce)
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

    def forget(self, workspace_id: str, pid: int | None = None) -> None:
        """Drop what is shared about a session that ended, or (no `pid`) every session of a workspace whose
        processes ended with it."""
        self.claims.forget(workspace_id, pid)


def _watch(
    table: ProcessTable,
    claims: SessionClaims,
    workspace_id: str,
    pid: int,
    timeout: float,
    finished: threading.Event,
    sent: list[int],
) -> None:
    """While the command runs: renew the claim, so that the other replicas know this one is alive; at
    the deadline SIGINT, then SIGTERM, then SIGKILL, each after the last had its grace, until done."""
    begun = time.monotonic()
    due = [begun + timeout, begun + timeout + GRACE, begun + timeout + 2 * GRACE]
    renewal = begun + RENEW_EVERY
    while not finished.wait(max(min(due[0] if due else renewal, renewal) - time.monotonic(), 0)):
        now = time.monotonic()
        if due and now >= due[0]:
            due.pop(0)
            signum = _INTERRUPTS[len(sent)]
            sent.append(signum)
            with contextlib.suppress(Conflict, NotFound):
                table.signal(pid, signum)
        if now >= renewal:
            renewal = now + RENEW_EVERY
            try:
                if not claims.renew(workspace_id, pid):
                    log.warning("session %s of %s: another replica took it over", pid, workspace_id)
            except SQLAlchemyError as exc:  # the next renewal may succeed: the lease allows two misses
                log.warning("session %s of %s: renewing its claim failed: %s", pid, workspace_id, exc)


def _ended(table: ProcessTable, pid: int, offset: int, nonce: str | None) -> bool:
    """Whether the command marked `nonce`, whose output starts at `offset`, has ended (or the session has)."""
    if nonce is None:
        return True
    stdout, stderr = MarkedOutput(nonce, 0), MarkedOutput(nonce, 0)
    events = table.output(pid, offset, follow=False)
    try:
        for event in events:
            if isinstance(event, ProcessOutput):
                (stdout if event.stream == "stdout" else stderr).feed(event.data)
            elif isinstance(event, ProcessEnded):
                return True
    finally:
        close_stream(events)
    return stdout.done and stderr.done


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
