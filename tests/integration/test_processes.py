"""Background processes over real gVisor, runc and E2B workspaces: they outlive the request and the server,
their output resumes by offset, DELETE leaves no child behind, terminals resize, and bad input is refused."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from agentbox.client import APIError, Client
from agentbox.wire.processes import OutputDroppedEvent, ProcessExitEvent, ProcessOutputEvent, ProcessStreamEvent
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import Server, eventually

COUNT_SLOWLY = "for i in $(seq 1 60); do echo line $i; sleep 0.05; done"
COUNTED = "".join(f"line {i}\n" for i in range(1, 61))


@contextlib.contextmanager
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own; the workspaces it made are deleted, whether the test passed or not."""
    server = Server(tmp_path).start()
    try:
        yield server
    finally:
        with server.client() as client:
            for workspace in client.list():
                client.delete(workspace.id)
        server.stop()


def text_of(events: Iterable[ProcessStreamEvent]) -> str:
    return "".join(event.data for event in events if isinstance(event, ProcessOutputEvent))


def running_commands(client: Client, workspace_id: str) -> list[str]:
    """The command names of every process in the workspace (ps needs no procps: /proc is enough)."""
    found = client.exec(workspace_id, "cat /proc/[0-9]*/comm 2>/dev/null").stdout
    return found.split()


def test_a_background_server_answers_commands_and_delete_leaves_no_child(
    alice: Client, workspace: WorkspaceOut
) -> None:
    workspace_id = workspace.id
    serving = alice.start_process(
        workspace_id, "cd /tmp && echo hello > index.html && exec python3 -m http.server 8123", tag="web"
    )
    assert serving.status == "running" and serving.tag == "web" and serving.pid > 1
    fetch = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8123/').read())\""
    assert eventually(lambda: alice.exec(workspace_id, fetch).stdout) == "b'hello\\n'\n"
    assert [p.pid for p in alice.processes(workspace_id)] == [serving.pid]

    # A process with children of its own: DELETE takes the whole group.
    family = alice.start_process(workspace_id, "sleep 1000 & sleep 1000 & wait")
    eventually(lambda: running_commands(alice, workspace_id).count("sleep") == 2 or None)
    alice.kill(workspace_id, family.pid)
    alice.kill(workspace_id, serving.pid)
    assert "sleep" not in running_commands(alice, workspace_id)
    assert "python3" not in running_commands(alice, workspace_id)
    ended = alice.process(workspace_id, family.pid)
    assert (ended.status, ended.signal, ended.exit_code) == ("exited", "SIGKILL", None)
    alice.kill(workspace_id, family.pid)  # killing what has exited is not an error


def test_output_resumes_exactly_where_the_client_left(alice: Client, workspace: WorkspaceOut) -> None:
    workspace_id = workspace.id
    started = alice.start_process(workspace_id, COUNT_SLOWLY)
    received, resume_at = "", 0
    # Leave after three pieces (the request ends: the process must not notice), come back, repeat.
    while True:
        events = alice.process_output(workspace_id, started.pid, offset=resume_at, follow=True)
        pieces = list(itertools.islice(events, 3))
        events.close()
        for event in pieces:
            if isinstance(event, ProcessOutputEvent):
                assert event.offset == resume_at
                received, resume_at = received + event.data, event.next_offset
        if any(isinstance(event, ProcessExitEvent) for event in pieces):
            break
    assert received == COUNTED
    assert alice.process(workspace_id, started.pid).exit_code == 0


def test_a_follower_of_a_quiet_process_ends_when_its_client_leaves(alice: Client, workspace: WorkspaceOut) -> None:
    workspace_id = workspace.id
    quiet = alice.start_process(workspace_id, "echo once; sleep 600")
    # Readers of its output file: its supervisor, and each follower the helper serves.
    readers = f"ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c 'procs/{quiet.pid}/out' || true"
    alone = int(alice.exec(workspace_id, readers).stdout)
    events = alice.process_output(workspace_id, quiet.pid, follow=True)
    assert text_of(itertools.islice(events, 1)) == "once\n"
    assert int(alice.exec(workspace_id, readers).stdout) == alone + 1
    events.close()
    eventually(lambda: int(alice.exec(workspace_id, readers).stdout) == alone, timeout=20)
    assert alice.process(workspace_id, quiet.pid).status == "running"  # the process itself goes on


def test_processes_outlive_a_killed_server(tmp_path: Path) -> None:
    with own_server(tmp_path) as server:
        with server.client() as client:
            workspace = client.create()
            started = client.start_process(workspace.id, COUNT_SLOWLY)
            # Its deadline is kept in the workspace, so it holds with no server there to keep it.
            bounded = client.start_process(workspace.id, "sleep 1000 & sleep 1000 & wait", timeout=3)
            first = next(e for e in client.process_output(workspace.id, started.pid, follow=True))
            assert isinstance(first, ProcessOutputEvent)
        server.stop(kill=True)
        server.start()
        with server.client() as client:
            events = list(client.process_output(workspace.id, started.pid, offset=first.next_offset, follow=True))
            assert first.data + text_of(events) == COUNTED
            assert isinstance(events[-1], ProcessExitEvent) and events[-1].exit_code == 0
            ended = list(client.process_output(workspace.id, bounded.pid, follow=True))[-1]
            assert isinstance(ended, ProcessExitEvent) and (ended.signal, ended.timed_out) == ("SIGKILL", True)
            assert client.process(workspace.id, bounded.pid).timed_out
            assert "sleep" not in running_commands(client, workspace.id)  # its whole group went
            assert not client.process(workspace.id, started.pid).timed_out


def test_stdin_signals_and_their_refusals(alice: Client, workspace: WorkspaceOut) -> None:
    workspace_id = workspace.id
    cat = alice.start_process(workspace_id, ["cat"], stdin=True)
    alice.write_stdin(workspace_id, cat.pid, b"first\n")
    alice.write_stdin(workspace_id, cat.pid, b"second\n")
    alice.close_stdin(workspace_id, cat.pid)
    events = list(alice.process_output(workspace_id, cat.pid, follow=True))
    assert text_of(events) == "first\nsecond\n"
    assert isinstance(events[-1], ProcessExitEvent) and events[-1].exit_code == 0

    sleeper = alice.start_process(workspace_id, ["sleep", "1000"])
    with pytest.raises(APIError) as no_stdin:
        alice.write_stdin(workspace_id, sleeper.pid, b"x")
    assert no_stdin.value.status_code == 409 and "without stdin" in no_stdin.value.detail
    with pytest.raises(APIError) as no_such_signal:
        alice.signal(workspace_id, sleeper.pid, "SIGNOPE")
    assert no_such_signal.value.status_code == 422
    with pytest.raises(APIError) as no_terminal:
        alice.resize(workspace_id, sleeper.pid, 80, 24)
    assert no_terminal.value.status_code == 409
    alice.signal(workspace_id, sleeper.pid, "SIGTERM")
    ended = eventually(lambda: (p := alice.process(workspace_id, sleeper.pid)).status == "exited" and p)
    assert ended.signal == "SIGTERM"
    with pytest.raises(APIError) as gone:
        alice.signal(workspace_id, sleeper.pid, "SIGTERM")
    assert gone.value.status_code == 409

    for bad in (lambda: alice.process(workspace_id, 999999), lambda: alice.kill(workspace_id, 999999)):
        with pytest.raises(APIError) as unknown:
            bad()
        assert unknown.value.status_code == 404
    with pytest.raises(APIError) as missing_program:
        alice.start_process(workspace_id, ["no-such-program"])
    assert missing_program.value.status_code == 400 and "no-such-program" in missing_program.value.detail


def test_a_terminal_sees_its_resize(alice: Client, workspace: WorkspaceOut) -> None:
    workspace_id = workspace.id
    shell = alice.start_process(workspace_id, "stty size; read line; stty size", pty={"cols": 100, "rows": 30})
    assert shell.pty is not None and shell.stdin
    eventually(lambda: "30 100" in text_of(alice.process_output(workspace_id, shell.pid)) or None)
    alice.resize(workspace_id, shell.pid, 132, 43)
    alice.write_stdin(workspace_id, shell.pid, b"\n")
    events = list(alice.process_output(workspace_id, shell.pid, follow=True))
    assert {e.stream for e in events if isinstance(e, ProcessOutputEvent)} == {"pty"}
    assert text_of(events).split("\r\n")[-2] == "43 132"
    for cols, rows in ((0, 24), (80, 100000)):
        with pytest.raises(APIError) as absurd:
            alice.resize(workspace_id, shell.pid, cols, rows)
        assert absurd.value.status_code == 422


def test_a_stopped_workspace_ends_its_processes_and_says_so(alice: Client) -> None:
    workspace = alice.create()
    try:
        sleeper = alice.start_process(workspace.id, ["sleep", "1000"])
        alice.stop(workspace.id)
        alice.start(workspace.id)
        ended = alice.process(workspace.id, sleeper.pid)
        assert (ended.status, ended.signal) == ("exited", "SIGKILL")
        events = list(alice.process_output(workspace.id, sleeper.pid, follow=True))
        assert isinstance(events[-1], ProcessExitEvent)  # a follower is never left waiting
    finally:
        alice.delete(workspace.id)


def test_output_past_the_kept_amount_says_what_was_dropped(alice: Client, workspace: WorkspaceOut) -> None:
    workspace_id = workspace.id
    # 24 MiB of output: more than the 16 MiB (at least) kept.
    flood = alice.start_process(workspace_id, "head -c 25165824 /dev/zero | tr '\\0' x")
    eventually(lambda: alice.process(workspace_id, flood.pid).status == "exited" or None)
    events = alice.process_output(workspace_id, flood.pid)
    first = next(events)
    assert isinstance(first, OutputDroppedEvent) and first.offset == 0 and first.resumed_at > 0
    kept = sum(len(e.data) for e in events if isinstance(e, ProcessOutputEvent))
    assert kept == 25165824 - first.resumed_at and kept >= 16 << 20


def peak_memory_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def test_a_gigabyte_flood_leaves_the_servers_memory_flat(tmp_path: Path) -> None:
    flood = "head -c 1073741824 /dev/zero"
    with own_server(tmp_path) as server, server.client() as client:
        assert server.process is not None
        workspace = client.create()
        client.exec(workspace.id, "true")  # the server has served an exec before it is measured
        before = peak_memory_mib(server.process.pid)
        result = client.exec(workspace.id, flood)
        assert result.stdout_truncated and len(result.stdout) == 10 << 20  # the server's exec output limit
        flooding = client.start_process(workspace.id, flood)
        expected, last = 0, None
        for event in client.process_output(workspace.id, flooding.pid, follow=True):
            # A follower that falls behind the output kept is told where it goes on: offsets stay exact.
            if isinstance(event, OutputDroppedEvent):
                assert event.offset == expected and event.resumed_at > expected
                expected = event.resumed_at
            elif isinstance(event, ProcessOutputEvent):
                assert event.offset == expected
                expected = event.next_offset
            last = event
        assert isinstance(last, ProcessExitEvent) and expected == 1 << 30
        assert peak_memory_mib(server.process.pid) - before <= 32
