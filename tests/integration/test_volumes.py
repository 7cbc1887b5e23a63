"""Named volumes over real gVisor workspaces: one volume shared by two workspaces (one writes, the other reads
through a read-only mount that refuses writes), full at its size (ENOSPC), kept after both are gone and
through a server restart (a third workspace reads it), refused for deletion while mounted (409 naming the
workspaces), deleted after with its mount and image gone; another owner's volume unknown; bad paths refused."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox.client import APIError

from .conftest import Server, workspace_disk_mounts


@pytest.fixture(scope="module")
def volumes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("volumes"), env={"WORKSPACE_MAX_VOLUME_SIZE": "256M"}).start()
    yield server
    server.stop()


def refused(call: object) -> APIError:
    assert callable(call)
    with pytest.raises(APIError) as error:
        call()
    return error.value


def test_a_volume_is_shared_kept_after_its_workspaces_and_deleted_once_unused(volumes_server: Server) -> None:
    server = volumes_server
    alice, bob = server.client("alice"), server.client("bob")
    made: list[str] = []
    volume = alice.create_volume("shared", "64M")
    mountpoint = server.data_dir / "volumes" / volume.id
    try:
        assert str(mountpoint) in workspace_disk_mounts()  # its own filesystem, mounted from now on
        writer = alice.create(provider="gvisor", volumes=[{"name": "shared", "path": "/mnt/shared"}])
        made.append(writer.id)
        reader = alice.create(
            provider="gvisor", volumes=[{"name": volume.id, "path": "/mnt/ro", "read_only": True}], network="none"
        )
        made.append(reader.id)
        assert [(v.name, v.path, v.read_only) for v in reader.volumes] == [("shared", "/mnt/ro", True)]

        wrote = alice.exec(writer.id, "echo hello > /mnt/shared/note && id -u && stat -c %u /mnt/shared/note")
        assert wrote.exit_code == 0 and wrote.stdout.split() == ["1000", "1000"], wrote  # the workspace user's
        read = alice.exec(reader.id, "cat /mnt/ro/note")
        assert (read.exit_code, read.stdout) == (0, "hello\n"), read
        blocked = alice.exec(reader.id, "echo no > /mnt/ro/other")
        assert blocked.exit_code != 0 and "Read-only file system" in blocked.stderr, blocked
        assert not (mountpoint / "data" / "other").exists()

        # Its size holds: writes past it fail inside the workspace, and what fits stays readable.
        full = alice.exec(writer.id, "dd if=/dev/zero of=/mnt/shared/big bs=1M count=100", timeout=120)
        assert full.exit_code != 0 and "No space left on device" in full.stderr, full
        assert alice.exec(writer.id, "rm /mnt/shared/big && cat /mnt/shared/note").stdout == "hello\n"
        assert alice.volume("shared").used_by == [writer.id, reader.id]

        in_use = refused(lambda: alice.delete_volume("shared"))
        assert in_use.status_code == 409 and writer.id in in_use.message and reader.id in in_use.message, in_use

        # Another owner neither sees it nor mounts it; bad paths are refused before anything is made.
        assert refused(lambda: bob.volume(volume.id)).status_code == 404
        assert refused(lambda: bob.delete_volume("shared")).status_code == 404
        theirs = refused(lambda: bob.create(provider="gvisor", volumes=[{"name": "shared", "path": "/mnt/x"}]))
        assert theirs.status_code == 422 and "'shared'" in theirs.message
        for path in ["/proc/x", "/", "relative", "/.agentbox/run", "/mnt/../dev"]:
            bad = refused(lambda path=path: alice.create(provider="gvisor", volumes=[{"name": "shared", "path": path}]))
            assert bad.status_code == 422, (path, bad)
        # A create that fails leaves the volume as it was: mounted, its files there.
        failed = refused(
            lambda: alice.create(
                provider="gvisor", image="agentbox-test/none:1", volumes=[{"name": "shared", "path": "/v"}]
            )
        )
        assert failed.status_code == 400
        assert str(mountpoint) in workspace_disk_mounts()
        assert (mountpoint / "data" / "note").read_text() == "hello\n"

        for workspace_id in list(made):
            alice.delete(workspace_id)
            made.remove(workspace_id)
        assert alice.volume("shared").used_by == []

        server.stop()  # a restart keeps it usable
        server.start()
        alice, bob = server.client("alice"), server.client("bob")
        third = alice.create(provider="gvisor", volumes=[{"name": "shared", "path": "/data"}])
        made.append(third.id)
        assert alice.exec(third.id, "cat /data/note").stdout == "hello\n"
        alice.delete(third.id)
        made.remove(third.id)

        alice.delete_volume("shared")
        assert alice.volumes() == []
        assert str(mountpoint) not in workspace_disk_mounts()
        assert not mountpoint.exists() and not (server.data_dir / "volumes" / f"{volume.id}.img").exists()
    finally:
        for workspace_id in made:
            with contextlib.suppress(APIError):
                alice.delete(workspace_id)
        with contextlib.suppress(APIError):
            alice.delete_volume(volume.id)
        alice.close()
        bob.close()


def test_a_volume_past_the_servers_size_is_refused_and_nothing_is_made(volumes_server: Server) -> None:
    with volumes_server.client("alice") as alice:
        too_big = refused(lambda: alice.create_volume("big", "1G"))
        assert too_big.status_code == 422 and "WORKSPACE_MAX_VOLUME_SIZE" in too_big.message
        assert alice.volumes() == []
        assert not list(Path(volumes_server.data_dir / "volumes").glob("vol-*"))
