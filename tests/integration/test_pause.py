"""Pause over real gVisor workspaces: one without network is checkpointed (its processes, shell sessions
and memory go on after `start`), any other keeps its files and says that its memory was not kept."""

from __future__ import annotations

import time

import docker
import pytest

from agentbox.client import APIError, Client
from agentbox.providers.docker.checkpoints import Checkpoints
from agentbox.wire.processes import ProcessOutputEvent

from .conftest import eventually, made

# Holds a Unix socket on the workspace's disk (a host-backed directory under gVisor).
SOCKET_HOLDER = "import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind('/tmp/app.sock')\n" + (
    "s.listen()\ntime.sleep(600)"
)
# Counts in memory only: after a pause, a process that was restarted would begin at 1 again.
COUNTER = "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)"


def counted(client: Client, workspace_id: str, pid: int) -> list[int]:
    events = client.process_output(workspace_id, pid)
    return [int(n) for n in "".join(e.data for e in events if isinstance(e, ProcessOutputEvent)).split()]


def test_gvisor_says_which_pauses_keep_memory(alice: Client) -> None:
    offers = {p.name: p.capabilities for p in alice.providers() if p.capabilities is not None}
    assert offers["gvisor"].pause_keeps_memory == ["none"]
    assert offers["docker"].pause_keeps_memory == []


def test_a_pause_keeps_the_processes_and_sessions_of_a_workspace_without_network(
    alice: Client, docker_client: docker.DockerClient
) -> None:
    with made(alice, network="none") as workspace:
        counter = alice.start_process(workspace.id, ["python3", "-c", COUNTER])
        session = alice.open_session(workspace.id)
        alice.run_in_session(workspace.id, session, "export KEPT=42; cd /tmp; unkept() { echo gone; }")
        alice.write_file(workspace.id, "/workspace/notes.txt", b"on the disk")
        eventually(lambda: len(counted(alice, workspace.id, counter.pid)) >= 5)

        before = counted(alice, workspace.id, counter.pid)
        paused = alice.pause(workspace.id)
        assert paused.status == "stopped" and paused.memory_kept is True
        time.sleep(2)  # the engine must not boot it afresh meanwhile (its restart policy)
        assert docker_client.containers.get(f"agentbox-{workspace.id}").status == "exited"
        with pytest.raises(APIError) as refused:
            alice.exec(workspace.id, ["true"])
        assert refused.value.status_code == 409

        resumed = alice.start(workspace.id)
        assert resumed.status == "running" and resumed.memory_kept is True
        assert alice.process(workspace.id, counter.pid).status == "running"

        def counted_on() -> list[int] | None:
            numbers = counted(alice, workspace.id, counter.pid)
            return numbers if len(numbers) > len(before) + 5 else None

        after = eventually(counted_on)
        assert after == list(range(1, len(after) + 1))  # one run, counting on from where it was
        ran = alice.run_in_session(workspace.id, session, "echo $KEPT; pwd; unkept")
        assert ran.stdout == "42\n/tmp\ngone\n"
        assert alice.read_file(workspace.id, "/workspace/notes.txt") == b"on the disk"
        assert alice.exec(workspace.id, ["python3", "-c", "print(6 * 7)"]).stdout == "42\n"
        # The memory image is dropped once the workspace runs again, and a second pause works like the first.
        assert not Checkpoints(docker_client).exists(f"agentbox-{workspace.id}")
        assert alice.pause(workspace.id).memory_kept is True
        alice.start(workspace.id)
        assert alice.process(workspace.id, counter.pid).status == "running"


@pytest.mark.parametrize(
    ("network", "holder"),
    [
        # gVisor cannot checkpoint a sandbox that uses the host's network stack.
        ("egress", None),
        # nor one holding a Unix socket on a host-backed directory (the workspace's disk, /tmp included).
        ("none", SOCKET_HOLDER),
    ],
)
def test_a_pause_that_cannot_keep_memory_keeps_the_files_and_says_so(
    alice: Client, network: str, holder: str | None
) -> None:
    with made(alice, network=network) as workspace:
        alice.write_file(workspace.id, "/workspace/notes.txt", b"on the disk")
        process = alice.start_process(workspace.id, ["python3", "-c", holder or COUNTER])
        if holder:
            eventually(lambda: alice.exec(workspace.id, ["test", "-S", "/tmp/app.sock"]).exit_code == 0)

        paused = alice.pause(workspace.id)
        assert paused.status == "stopped" and paused.memory_kept is False
        assert alice.pause(workspace.id).memory_kept is False  # a paused one is returned as is

        alice.start(workspace.id)
        assert alice.read_file(workspace.id, "/workspace/notes.txt") == b"on the disk"
        assert alice.process(workspace.id, process.pid).status == "exited"
