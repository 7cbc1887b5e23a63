"""Snapshots and forks over real gVisor workspaces, on a server of this module's own (so that its quota and
what it leaves behind are its own): files restored into new workspaces, which then diverge from their source;
list, get, delete and the quota; a snapshot outliving its source; a fork of a network-less workspace with a
background process; bad input refused; nothing left behind."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from agentbox.client import APIError, Client
from agentbox.sandbox import CONTROL_SOCKET
from agentbox.sandbox.channel import HelperChannel
from agentbox.sandbox.control import ControlSocketTransport
from agentbox.wire.snapshots import ForkOut

from .conftest import Server, eventually

QUOTA = 4
# Writes a counter to a file ten times a second, counting in memory: a process restarted from nothing would
# begin at 1 again.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /workspace/counter; sleep 0.1; done"


@pytest.fixture(scope="module")
def snapping(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("snapshots"),
        env={"WORKSPACE_MAX_SNAPSHOTS": str(QUOTA), "WORKSPACE_MAX_CONCURRENT": "8"},
    ).start()
    yield server
    server.stop()


@pytest.fixture
def alice(snapping: Server) -> Iterator[Client]:
    with snapping.client("alice") as client:
        yield client
        for workspace in client.list():
            with contextlib.suppress(APIError):
                client.delete(workspace.id)
        for snapshot in client.snapshots(limit=1000).snapshots:
            with contextlib.suppress(APIError):
                client.delete_snapshot(snapshot.id)


def snapshot_dirs(server: Server) -> set[str]:
    root = server.data_dir / "snapshots"
    return {entry.name for entry in root.iterdir()} if root.is_dir() else set()


def number(client: Client, workspace_id: str) -> int:
    """The counter's file (0 until it is first written). The counter rewrites it ten times a second, so a read
    can meet it mid-rewrite: the server says so (409, read it again), and so does this, a few times."""
    for _ in range(5):
        try:
            return int(client.read_file(workspace_id, "/workspace/counter").decode().strip() or 0)
        except APIError as exc:
            if exc.status_code == 404:
                return 0
            if exc.status_code != 409:
                raise
    raise AssertionError(f"{workspace_id}: /workspace/counter changed under five reads in a row")


def counting_past(client: Client, workspace_id: str, start: int) -> Callable[[], bool]:
    return lambda: number(client, workspace_id) > start + 3


def test_a_snapshot_restores_the_files_into_a_new_workspace_and_the_two_diverge(
    alice: Client, snapping: Server
) -> None:
    source = alice.create(provider="gvisor", disk="1G")
    alice.write_file(source.id, "/workspace/project/main.py", b"print('hello')\n")
    alice.exec(source.id, "head -c 3000000 /dev/urandom > /tmp/blob; echo home > ~/note; sync")
    blob = alice.read_file(source.id, "/tmp/blob")

    taken = alice.snapshot(source.id, name="first")
    assert taken.workspace_id == source.id and taken.name == "first" and taken.disk == 1 << 30
    # A workspace with a network keeps its files only, and says why.
    assert taken.memory_kept is False and taken.memory_note is not None and "network" in taken.memory_note
    # Sparse: what was written (3 MB and the filesystem's own blocks), not the 1 GiB disk.
    assert 3_000_000 < taken.size < 200 << 20
    assert snapshot_dirs(snapping) == {taken.id}
    assert alice.get(source.id).status == "running"
    alice.write_file(source.id, "/workspace/after.txt", b"source only")

    child = alice.create(snapshot="first")
    assert (child.image, child.disk, child.memory) == (source.image, source.disk, source.memory)
    assert alice.read_file(child.id, "/workspace/project/main.py") == b"print('hello')\n"
    assert alice.read_file(child.id, "/tmp/blob") == blob
    assert alice.exec(child.id, "cat ~/note").stdout == "home\n"
    assert alice.exec(child.id, "test -e /workspace/after.txt").exit_code == 1  # written after the snapshot
    assert alice.exec(child.id, "python3 /workspace/project/main.py").stdout == "hello\n"

    alice.write_file(child.id, "/workspace/project/main.py", b"print('child')\n")
    assert alice.read_file(source.id, "/workspace/project/main.py") == b"print('hello')\n"
    alice.exec(source.id, "rm /tmp/blob")
    assert alice.read_file(child.id, "/tmp/blob") == blob
    # A larger disk than the snapshot's is the snapshot's filesystem, grown.
    grown = alice.create(snapshot=taken.id, disk="2G")
    assert alice.read_file(grown.id, "/workspace/project/main.py") == b"print('hello')\n"
    free = alice.exec(grown.id, "df -k /workspace | tail -1 | awk '{print $2}'").stdout
    assert int(free) > 1_500_000

    alice.delete_snapshot("first")
    assert snapshot_dirs(snapping) == set()
    assert alice.read_file(child.id, "/tmp/blob") == blob  # a workspace made from it keeps its own copy


def test_list_get_delete_quota_and_a_deleted_source(alice: Client, bob: Client, snapping: Server) -> None:
    source = alice.create(provider="gvisor")
    alice.write_file(source.id, "/workspace/generation", b"1")
    first = alice.snapshot(source.id, name="gen-1")
    second = alice.snapshot(source.id)
    listed = alice.snapshots()
    assert [s.id for s in listed.snapshots] == [second.id, first.id] and listed.next_before is None
    assert [s.id for s in alice.snapshots(name="gen-1").snapshots] == [first.id]
    assert alice.get_snapshot("gen-1").id == first.id
    with pytest.raises(APIError) as held:
        alice.snapshot(source.id, name="gen-1")
    assert held.value.status_code == 409

    # Its source deleted, a snapshot is as usable as before; a workspace made from it can be snapshotted in turn.
    alice.delete(source.id)
    child = alice.create(snapshot="gen-1")
    assert alice.read_file(child.id, "/workspace/generation") == b"1"
    alice.write_file(child.id, "/workspace/generation", b"2")
    third = alice.snapshot(child.id, name="gen-2")
    grandchild = alice.create(snapshot=third.id)
    assert alice.read_file(grandchild.id, "/workspace/generation") == b"2"
    assert {s.workspace_id for s in alice.snapshots().snapshots} == {source.id, child.id}

    alice.snapshot(child.id)
    with pytest.raises(APIError) as over:
        alice.snapshot(child.id)
    assert over.value.status_code == 429 and "WORKSPACE_MAX_SNAPSHOTS" in over.value.message
    assert len(snapshot_dirs(snapping)) == QUOTA  # the refused one left nothing

    # Another owner finds none of it.
    for ref in (first.id, "gen-1"):
        with pytest.raises(APIError) as hidden:
            bob.get_snapshot(ref)
        assert hidden.value.status_code == 404
        with pytest.raises(APIError) as hidden:
            bob.create(snapshot=ref)
        assert hidden.value.status_code == 404
    with pytest.raises(APIError) as hidden:
        bob.fork(child.id, 1)
    assert hidden.value.status_code == 404

    alice.delete_snapshot(second.id)
    with pytest.raises(APIError) as gone:
        alice.get_snapshot(second.id)
    assert gone.value.status_code == 404
    assert len(snapshot_dirs(snapping)) == QUOTA - 1


@pytest.fixture
def bob(snapping: Server) -> Iterator[Client]:
    with snapping.client("bob") as client:
        yield client


def test_a_fork_of_a_network_less_workspace_with_a_running_process(alice: Client, snapping: Server) -> None:
    source = alice.create(provider="gvisor", network="none")
    counter = alice.start_process(source.id, COUNTER)
    eventually(lambda: number(alice, source.id) >= 5)
    # Written just before the fork, with no sync: in each fork all the same (gVisor flushes as it checkpoints).
    fresh = alice.exec(source.id, "head -c 5000000 /dev/urandom > ~/fresh && sha256sum < ~/fresh").stdout
    before = alice.get(source.id)

    fork = alice.fork(source.id, 2)
    assert isinstance(fork, ForkOut) and fork.made == 2 and fork.source == source.id
    assert fork.snapshot.memory_kept is MEMORY_KEPT, fork.snapshot.memory_note
    forks = [member.id for member in fork.workspaces if member.id is not None]
    assert len(set(forks)) == 2
    # The source goes on, with its id and expiry, its process still counting.
    after = alice.get(source.id)
    assert after.status == "running" and after.expires_at == before.expires_at
    assert alice.process(source.id, counter.pid).status == "running"
    at_fork = number(alice, source.id)
    eventually(counting_past(alice, source.id, at_fork))

    for workspace_id in forks:
        assert alice.get(workspace_id).network == "none"
        if MEMORY_KEPT:
            # The process goes on in each fork, from where it was: its count never starts again at 1.
            assert alice.process(workspace_id, counter.pid).status == "running"
            start = number(alice, workspace_id)
            assert start >= 5
            eventually(counting_past(alice, workspace_id, start))
            # Its helper, restored with the source's id in memory, answers on the fork's own control socket as
            # the fork's (else every command would go the engine's slower way in).
            socket = snapping.data_dir / "run" / workspace_id / CONTROL_SOCKET
            HelperChannel(ControlSocketTransport(socket, workspace_id)).probe()
        else:
            # Files only: the counter as it was written, nothing counting on.
            start = number(alice, workspace_id)
            assert start >= 5
            assert all(p.status != "running" for p in alice.processes(workspace_id))
        assert alice.exec(workspace_id, "sha256sum < ~/fresh").stdout == fresh
    # Writes in one reach no other.
    alice.write_file(forks[0], "/workspace/mine", b"first fork")
    for other in (source.id, forks[1]):
        assert alice.exec(other, "test -e /workspace/mine").exit_code == 1
    # The fork's snapshot went once its workspaces were made.
    assert alice.snapshots().snapshots == [] and snapshot_dirs(snapping) == set()


#: Whether this host's runsc keeps a fork's memory (see docs/architecture.md, "Snapshots").
MEMORY_KEPT = True


def test_bad_input_is_refused_clearly(alice: Client) -> None:
    source = alice.create(provider="gvisor")
    for count in (0, 101):
        with pytest.raises(APIError) as refused:
            alice.fork(source.id, count)
        assert refused.value.status_code == 422
    with pytest.raises(APIError) as unknown:
        alice.create(snapshot="snap-0123456789abcdef")
    assert unknown.value.status_code == 404 and "snap-0123456789abcdef" in unknown.value.message
    with pytest.raises(APIError) as unknown:
        alice.create(snapshot="no-such-name")
    assert unknown.value.status_code == 404
    with pytest.raises(APIError) as smaller:
        taken = alice.snapshot(source.id)
        alice.create(snapshot=taken.id, disk="64M")
    assert smaller.value.status_code == 400 and "disk" in smaller.value.message
    with pytest.raises(APIError) as unknown:
        alice.fork("ws-nosuchworkspace", 1)
    assert unknown.value.status_code == 404


def test_nothing_is_left_behind(alice: Client, snapping: Server, docker_client: docker.DockerClient) -> None:
    source = alice.create(provider="gvisor", network="none")
    fork = alice.fork(source.id, 2, keep_snapshot=True)
    assert fork.snapshot_kept and snapshot_dirs(snapping) == {fork.snapshot.id}
    for member in fork.workspaces:
        assert member.id is not None
        alice.delete(member.id)
    alice.delete(source.id)
    alice.delete_snapshot(fork.snapshot.id)
    assert snapping.containers(docker_client) == {}
    assert snapping.disks() == set()
    assert snapshot_dirs(snapping) == set()
    assert not list(Path(snapping.data_dir / "disks").glob("ws-*.img"))


def test_the_cli(alice: Client, snapping: Server) -> None:
    from .test_cli import agentbox

    source = alice.create(provider="gvisor")
    alice.write_file(source.id, "/workspace/from-cli", b"kept")
    snapshot_id = agentbox(snapping, "ws", "snapshot", source.id, "--name", "cli-made").stdout.split()[0]
    assert snapshot_id.startswith("snap-")
    listed = agentbox(snapping, "snapshots", "ls", env={"COLUMNS": "200"}).stdout
    assert snapshot_id in listed and "cli-made" in listed and "files only" in listed
    child = agentbox(snapping, "ws", "create", "--snapshot", "cli-made").stdout.strip()
    assert alice.read_file(child, "/workspace/from-cli") == b"kept"
    forked = agentbox(snapping, "ws", "fork", source.id, "--count", "2").stdout.split()
    assert len([line for line in forked if line.startswith("ws-")]) == 2
    refused = agentbox(snapping, "ws", "fork", source.id, "--count", "0", check=False)
    assert refused.returncode == 2 and "--count" in refused.stderr
    agentbox(snapping, "snapshots", "rm", "cli-made")
    assert agentbox(snapping, "snapshots", "ls", "-q").stdout.strip() == ""
    missing = agentbox(snapping, "snapshots", "rm", "cli-made", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr
