"""How a session's run finds its end in the shell's output, whatever pieces the output arrives in; how replicas
share a session through the database (on SQLite here), with real bash sessions on this host."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Literal

import pytest

from agentbox.db.models import Status
from agentbox.db.store import Store
from agentbox.errors import Conflict, NotFound
from agentbox.sandbox.process_table import (
    ProcessEnded,
    ProcessEvent,
    ProcessInfo,
    ProcessOutput,
    ProcessRequest,
    TerminalSize,
)
from agentbox.workspaces.session_claims import Claim, SessionClaims
from agentbox.workspaces.sessions import MarkedOutput, ShellSessions, ansi_c, run_line
from tests.session_claims import race_for_one_session
from tests.unit.test_store import make_workspace


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_the_marker_is_found_across_pieces_and_later_output_is_nobodys(piece: int) -> None:
    stream = b"partial line" + b"\x1eagentbox-00ff 7\n" + b"a background job's output\n"
    out = MarkedOutput("00ff", limit=100)
    for start in range(0, len(stream), piece):
        out.feed(stream[start : start + piece])
    assert (out.done, out.status, out.text(), out.truncated) == (True, 7, "partial line", False)


def test_another_runs_marker_is_output_and_the_limit_holds() -> None:
    out = MarkedOutput("00ff", limit=10)
    out.feed(b"\x1eagentbox-aaaa 0\n" + b"x" * 40)
    assert not out.done
    out.feed(b"\x1eagentbox-00ff\n")  # stderr's marker has no status
    assert (out.done, out.status, out.truncated, len(out.text())) == (True, None, True, 10)


@pytest.mark.parametrize(
    "text", ["plain", 'it\'s \\ "quoted" $HOME `x` $(y)', "two\nlines\tand\x1bcontrol\x7f", "ünïcødé ✓", "\\x41"]
)
def test_a_command_reaches_bash_exactly_as_written(text: str) -> None:
    shown = subprocess.run(["bash", "-c", f"printf %s {ansi_c(text)}"], capture_output=True, check=True).stdout
    assert shown.decode() == text


# Shared by replicas: the claim of a session and where its output was read to, in the database (here
# SQLite), and the session itself a real bash on this host behind a process table like a workspace's.


class HostProcesses:
    """A ProcessTable of processes on this host: output kept in memory by offset, as the helper keeps it."""

    def __init__(self) -> None:
        self._processes: dict[int, tuple[subprocess.Popen[bytes], ProcessRequest]] = {}
        self._output: dict[int, list[ProcessOutput]] = {}
        self._ended: dict[int, bool] = {}
        self._changed = threading.Condition()

    def start(self, request: ProcessRequest) -> ProcessInfo:
        process = subprocess.Popen(
            request.argv,
            cwd=request.cwd,
            env={"PATH": os.environ["PATH"], **request.env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._processes[process.pid] = (process, request)
        self._output[process.pid] = []
        readers = [
            threading.Thread(target=self._read, args=(process, name), daemon=True) for name in ("stdout", "stderr")
        ]
        for reader in readers:
            reader.start()
        threading.Thread(target=self._reap, args=(process, readers), daemon=True).start()
        return self.get(process.pid)

    def _read(self, process: subprocess.Popen[bytes], stream: Literal["stdout", "stderr"]) -> None:
        pipe = process.stdout if stream == "stdout" else process.stderr
        assert pipe is not None
        while data := os.read(pipe.fileno(), 4096):
            with self._changed:
                chunks = self._output[process.pid]
                offset = chunks[-1].offset + len(chunks[-1].data) if chunks else 0
                chunks.append(ProcessOutput(stream=stream, offset=offset, data=data))
                self._changed.notify_all()

    def _reap(self, process: subprocess.Popen[bytes], readers: list[threading.Thread]) -> None:
        process.wait()
        for reader in readers:
            reader.join()
        with self._changed:
            self._ended[process.pid] = True
            self._changed.notify_all()

    def list(self) -> list[ProcessInfo]:
        return [self.get(pid) for pid in self._processes]

    def get(self, pid: int) -> ProcessInfo:
        if pid not in self._processes:
            raise NotFound(f"no process {pid}")
        process, request = self._processes[pid]
        return ProcessInfo(
            pid=pid,
            command=request.argv,
            cwd=request.cwd,
            tag=request.tag,
            stdin=request.stdin,
            pty=None,
            status="exited" if self._ended.get(pid) else "running",
            started_at=None,
            exit_code=process.returncode if self._ended.get(pid) and process.returncode >= 0 else None,
        )

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        self.get(pid)
        index = 0
        while True:
            with self._changed:
                chunks = self._output[pid]
                if index == len(chunks) and not self._ended.get(pid) and follow:
                    self._changed.wait(1)
                    continue
                fresh, ended = chunks[index:], self._ended.get(pid, False)
            for chunk in fresh:
                index += 1
                end = chunk.offset + len(chunk.data)
                if end > offset:
                    skip = max(offset - chunk.offset, 0)
                    yield ProcessOutput(chunk.stream, chunk.offset + skip, chunk.data[skip:])
                    offset = end
            if not fresh and (ended or not follow):
                if ended:
                    info = self.get(pid)
                    yield ProcessEnded(exit_code=info.exit_code, signal=None, ended_at=None)
                return

    def write_stdin(self, pid: int, data: Iterable[bytes]) -> int:
        process, _ = self._processes[pid]
        if self._ended.get(pid) or process.stdin is None:
            raise Conflict(f"process {pid} has ended")
        sent = 0
        for piece in data:
            process.stdin.write(piece)
            sent += len(piece)
        process.stdin.flush()
        return sent

    def close_stdin(self, pid: int) -> None:
        stdin = self._processes[pid][0].stdin
        if stdin is not None:
            stdin.close()

    def resize(self, pid: int, size: TerminalSize) -> None:
        raise Conflict(f"process {pid} runs without a terminal")

    def signal(self, pid: int, signum: int) -> None:
        if self._ended.get(pid):
            raise Conflict(f"process {pid} has ended")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)
        if signum == signal.SIGKILL:
            self._processes[pid][0].wait()

    def end(self) -> None:
        for process, _ in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if process.stdin is not None:
                process.stdin.close()


@pytest.fixture
def table() -> Iterator[HostProcesses]:
    processes = HostProcesses()
    yield processes
    processes.end()


def eventually(check: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not so after {timeout} s"
        time.sleep(0.02)


def replica(store: Store, name: str, lease: timedelta = timedelta(seconds=30)) -> ShellSessions:
    return ShellSessions(SessionClaims(store, name, lease))


def test_a_claim_is_one_replicas_at_a_time_and_free_again_when_let_go(store: Store) -> None:
    one, two = SessionClaims(store, "r1"), SessionClaims(store, "r2")
    assert one.take("ws-a", 7, "n1") == Claim(read_to=None, pending=None)  # nobody has recorded this session
    with pytest.raises(Conflict) as busy:
        two.take("ws-a", 7, "n2")
    assert "running a command" in busy.value.detail
    assert not two.renew("ws-a", 7)  # not its claim
    one.begin("ws-a", 7, "n1", 100)
    two.release("ws-a", 7, 999, None)  # not its claim: nothing changes
    with pytest.raises(Conflict):
        two.take("ws-a", 7, "n2")
    one.release("ws-a", 7, 150, None)
    assert two.take("ws-a", 7, "n2") == Claim(read_to=150, pending=None)
    assert one.take("ws-a", 8, "n3") == Claim(read_to=None, pending=None)  # another session: its own claim


def test_concurrent_claims_of_one_session_let_exactly_one_through(store: Store) -> None:
    assert race_for_one_session(store) == [False] * 31 + [True]


def test_a_claim_past_its_lease_is_free_and_tells_of_the_command_left_unread(store: Store) -> None:
    dead = SessionClaims(store, "r1", lease=timedelta(seconds=-1))  # died long ago: its lease has run out
    dead.fresh("ws-a", 7, "n1")
    dead.release("ws-a", 7, 40, None)
    assert dead.take("ws-a", 7, "n2") == Claim(read_to=40, pending=None)  # "n2" is written down as it is taken
    claim = SessionClaims(store, "r2").take("ws-a", 7, "n3")
    assert claim == Claim(read_to=40, pending="n2")  # r1 wrote n2's command and never read its end


def test_what_is_known_of_a_session_goes_with_it_or_its_workspace(store: Store) -> None:
    claims = SessionClaims(store, "r1")
    store.add(make_workspace("ws-live"), "created")
    store.add(make_workspace("ws-gone", status=Status.DELETED), "created")
    for workspace_id, pid in (("ws-live", 1), ("ws-live", 2), ("ws-gone", 1), ("ws-never", 1)):
        claims.fresh(workspace_id, pid, "n")
    claims.forget("ws-live", 1)
    assert claims.get("ws-live", 1) is None and claims.get("ws-live", 2) is not None
    assert claims.sweep() == 2  # the deleted workspace's and the unknown one's
    assert claims.get("ws-live", 2) is not None
    claims.forget("ws-live")
    assert claims.get("ws-live", 2) is None


def test_a_session_opened_through_one_replica_is_used_through_another(store: Store, table: HostProcesses) -> None:
    one, two = replica(store, "r1"), replica(store, "r2")
    session = one.open(table, "ws-a", "/tmp", {})
    assert two.run(table, "ws-a", session.pid, "cd / && export A=1; echo first", 10, 1000).stdout == "first\n"
    both = one.run(table, "ws-a", session.pid, 'pwd; echo "$A"; echo err >&2', 10, 1000)
    assert (both.stdout, both.stderr, both.exit_code) == ("/\n1\n", "err\n", 0)
    assert two.run(table, "ws-a", session.pid, "echo third", 10, 1000).stdout == "third\n"


def test_a_second_command_through_another_replica_waits_its_turn(store: Store, table: HostProcesses) -> None:
    one, two = replica(store, "r1"), replica(store, "r2")
    session = one.open(table, "ws-a", "/tmp", {})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(one.run, table, "ws-a", session.pid, "echo started; sleep 30", 60, 1000)
        eventually(lambda: SessionClaims(store, "-").get("ws-a", session.pid).nonce is not None)  # type: ignore[union-attr]
        with pytest.raises(Conflict) as busy:
            two.run(table, "ws-a", session.pid, "echo too", 10, 1000)
        assert "running a command" in busy.value.detail
        table.signal(session.pid, signal.SIGINT)  # ^C: the first command ends, the session stays
        assert slow.result().stdout == "started\n"
    assert two.run(table, "ws-a", session.pid, "echo now", 10, 1000).stdout == "now\n"


@pytest.mark.parametrize("written", [True, False], ids=["its command still running", "its command never written"])
def test_a_replica_that_died_mid_command_costs_neither_the_session_nor_a_byte(
    store: Store, table: HostProcesses, written: bool
) -> None:
    """A replica died holding the session (its lease ran out) after writing a command that still runs,
    or just before writing it: the next command, through another replica, gets only its own output."""
    session = replica(store, "r0").open(table, "ws-a", "/tmp", {})
    replica(store, "r0").run(table, "ws-a", session.pid, "cd / && export KEPT=yes", 10, 1000)
    dead = SessionClaims(store, "r1", lease=timedelta(seconds=-1))
    claim = dead.take("ws-a", session.pid, "0123456789abcdef")
    assert claim.pending is None and claim.read_to is not None
    if written:
        table.write_stdin(session.pid, [run_line("echo orphan; sleep 60; echo never", "0123456789abcdef")])
        eventually(lambda: b"orphan" in b"".join(e.data for e in table._output[session.pid]))
    after = replica(store, "r2").run(table, "ws-a", session.pid, 'echo "mine $KEPT"; pwd', 30, 1000)
    assert (after.stdout, after.stderr, after.exit_code, after.timed_out) == ("mine yes\n/\n", "", 0, False)
    assert replica(store, "r1").run(table, "ws-a", session.pid, "echo next", 10, 1000).stdout == "next\n"


def test_the_earlier_commands_output_is_skipped_whatever_pieces_it_comes_in() -> None:
    stream = b"orphan's\n\x1eagentbox-0a0a 130\nmine\n\x1eagentbox-0b0b 0\n"
    for piece in (1, 5, 1000):
        out = MarkedOutput("0b0b", limit=100, previous="0a0a")
        for start in range(0, len(stream), piece):
            out.feed(stream[start : start + piece])
        assert (out.done, out.status, out.text()) == (True, 0, "mine\n")


class CutShort(HostProcesses):
    """A table whose next follower stops after its first piece of output, as a stream the sandbox's going
    away cut short would, without an error."""

    cut = False

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        events = super().output(pid, offset, follow)
        if not (self.cut and follow):
            return events
        self.cut = False
        return itertools.islice(events, 1)


def test_a_command_whose_output_was_cut_short_leaves_its_rest_to_nobody(store: Store) -> None:
    table = CutShort()
    try:
        sessions = replica(store, "r1")
        session = sessions.open(table, "ws-a", "/tmp", {})
        table.cut = True
        cut = sessions.run(table, "ws-a", session.pid, "echo part-one; sleep 0.5; echo part-two", 10, 1000)
        assert cut.stdout == "part-one\n" and cut.exit_code is None
        after = replica(store, "r2").run(table, "ws-a", session.pid, "echo next", 10, 1000)
        assert (after.stdout, after.stderr, after.exit_code) == ("next\n", "", 0)
    finally:
        table.end()
