"""Storage no record names is swept (issue 30): a volume's disk or a snapshot's copy is made before its row is
written, so a crash between the two leaves storage that nothing lists, mounts or deletes. Such a crash is made
here by removing the rows of a real volume and a real snapshot while the server is down; at its next start the
storage of those goes, and that of the ones it still has rows for stays."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from .conftest import Server, workspace_disk_mounts


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("sweep")).start()
    yield server
    if server.process is None:  # a failure while it was down
        server.start()
    alice = server.client("alice")
    for workspace in alice.list():
        alice.delete(workspace.id)
    for snapshot in alice.snapshots().snapshots:
        alice.delete_snapshot(snapshot.id)
    for volume in alice.volumes():
        alice.delete_volume(volume.id)
    server.stop()


def test_storage_without_a_record_is_removed_at_the_next_start(server: Server) -> None:
    alice = server.client("alice")
    kept_volume, lost_volume = alice.create_volume("kept", "64M"), alice.create_volume("lost", "64M")
    source = alice.create(provider="gvisor")
    alice.write_file(source.id, "/workspace/note", b"hello")
    kept_snapshot, lost_snapshot = alice.snapshot(source.id, name="kept"), alice.snapshot(source.id, name="lost")
    alice.delete(source.id)
    volumes, snapshots = server.data_dir / "volumes", server.data_dir / "snapshots"
    assert (volumes / f"{lost_volume.id}.img").exists() and (snapshots / lost_snapshot.id).is_dir()

    server.stop(kill=True)
    with sqlite3.connect(server.data_dir / "agentbox.db") as db:
        db.execute("DELETE FROM volumes WHERE id = ?", (lost_volume.id,))
        db.execute("DELETE FROM snapshots WHERE id = ?", (lost_snapshot.id,))
    server.start()

    assert not (volumes / f"{lost_volume.id}.img").exists() and not (volumes / lost_volume.id).exists()
    assert str(volumes / lost_volume.id) not in workspace_disk_mounts()
    assert not (snapshots / lost_snapshot.id).exists()
    # What has a record stays, and works.
    alice = server.client("alice")
    assert [v.name for v in alice.volumes()] == ["kept"] and (volumes / f"{kept_volume.id}.img").exists()
    restored = alice.create(snapshot="kept")
    assert alice.read_file(restored.id, "/workspace/note") == b"hello"
    alice.delete(restored.id)
    alice.delete_snapshot(kept_snapshot.id)
    alice.delete_volume("kept")
