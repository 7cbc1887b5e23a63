"""Volumes without an engine: the rules on names, sizes and mount paths (wire/volumes.py), and the API's
volumes over fake providers (one that keeps volumes, one that cannot): made, listed, mounted, refused while in
use, another owner's unknown. The real disks, mounts and gVisor are tests/integration/test_volumes.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agentbox.client import Client
from agentbox.providers.base import Capabilities
from agentbox.wire.volumes import CreateVolume, mount_path_problem
from agentbox.wire.workspaces import CreateWorkspace
from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app
from tests.unit.test_api import client, refused

KEEPS_VOLUMES = Capabilities(runtime="fake", isolation="none (a unit-test fake)", volumes=True)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("data", "not an absolute path"),
        ("/", "may not be a volume's mount point"),
        ("/workspace", "may not be a volume's mount point"),
        ("/tmp", "may not be a volume's mount point"),
        ("/proc/x", "under /proc"),
        ("/sys", "under /sys"),
        ("/dev/shm", "under /dev"),
        ("/.agentbox/run", "under /.agentbox"),
        ("/mnt/../proc", "not a plain absolute path"),
        ("/mnt/data/", "not a plain absolute path"),
        ("//mnt", "not a plain absolute path"),
        ("/mnt/./data", "not a plain absolute path"),
        ("/mnt/\0", "NUL"),
    ],
)
def test_a_mount_path_that_would_hide_the_system_or_is_not_plain_is_refused(path: str, why: str) -> None:
    problem = mount_path_problem(path)
    assert problem is not None and why in problem


@pytest.mark.parametrize("path", ["/mnt/data", "/workspace/data", "/home/agent/cache", "/data", "/procfs"])
def test_a_plain_path_elsewhere_is_a_mount_point(path: str) -> None:
    assert mount_path_problem(path) is None


def test_a_volume_body_takes_sizes_as_workspaces_do_and_refuses_bad_names() -> None:
    assert CreateVolume(name="data-1.x_y", size="1G").size == 1 << 30  # type: ignore[arg-type]
    assert CreateVolume(name="d", size=20 << 20).size == 20 << 20
    for bad in [{"name": "-x", "size": "1G"}, {"name": "a/b", "size": "1G"}, {"name": "x" * 65, "size": "1G"}]:
        with pytest.raises(ValidationError):
            CreateVolume.model_validate(bad)
    for size in ["1M", 0, "lots", "2P"]:  # under 16M, not positive, not a size, over the largest
        with pytest.raises(ValidationError):
            CreateVolume.model_validate({"name": "d", "size": size})


def test_a_create_names_each_volume_once_per_path() -> None:
    body = CreateWorkspace.model_validate({"volumes": [{"name": "a", "path": "/mnt/a", "read_only": True}]})
    (request,) = body.to_domain().volumes
    assert (request.name, request.path, request.read_only) == ("a", "/mnt/a", True)
    with pytest.raises(ValidationError, match="two volumes at '/mnt/a'"):
        CreateWorkspace.model_validate({"volumes": [{"name": "a", "path": "/mnt/a"}, {"name": "b", "path": "/mnt/a"}]})
    with pytest.raises(ValidationError, match="under /proc"):
        CreateWorkspace.model_validate({"volumes": [{"name": "a", "path": "/proc/a"}]})


@pytest.fixture
def providers() -> dict[str, FakeProvider]:
    return {"gvisor": FakeProvider("gvisor", capabilities=KEEPS_VOLUMES), "e2b": FakeProvider("e2b")}


@pytest.fixture
def app(tmp_path: Path, providers: dict[str, FakeProvider]) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path, providers, WORKSPACE_MAX_VOLUMES="2", WORKSPACE_MAX_VOLUME_SIZE="1G")) as app:
        yield app


def test_volumes_are_made_mounted_kept_and_deleted_once_unused(
    app: TestClient, providers: dict[str, FakeProvider]
) -> None:
    keeper = providers["gvisor"]
    with client(app, KEYS["alice"]) as alice, client(app, KEYS["bob"]) as bob:
        made = alice.create_volume("data", "64M")
        assert (made.name, made.size, made.used_by) == ("data", "64M", []) and made.id.startswith("vol-")
        assert keeper.volumes == {made.id: 64 << 20}
        assert alice.volume("data") == alice.volume(made.id) == made
        taken = refused(lambda: alice.create_volume("data", "64M"))
        assert taken.status_code == 409 and "named 'data' already" in taken.message
        too_big = refused(lambda: alice.create_volume("big", "2G"))
        assert too_big.status_code == 422 and "WORKSPACE_MAX_VOLUME_SIZE" in too_big.message

        one = alice.create(volumes=[{"name": "data", "path": "/mnt/data"}])
        two = alice.create(volumes=[{"name": made.id, "path": "/data", "read_only": True}])
        assert [(v.volume, v.name, v.path, v.read_only) for v in one.volumes] == [(made.id, "data", "/mnt/data", False)]
        assert [(v.path, v.read_only) for v in two.volumes] == [("/data", True)]
        (sandbox,) = [s for s in keeper.sandboxes.values() if s.id == two.id]
        assert [(m.volume, m.path, m.read_only) for m in sandbox.spec.volumes] == [(made.id, "/data", True)]
        assert alice.volume("data").used_by == [one.id, two.id]

        in_use = refused(lambda: alice.delete_volume("data"))
        assert in_use.status_code == 409 and one.id in in_use.message and two.id in in_use.message
        unknown = refused(lambda: alice.create(volumes=[{"name": "nothing", "path": "/mnt/x"}]))
        assert unknown.status_code == 422 and "'nothing'" in unknown.message
        # Another owner's volume is unknown, by name and by id alike.
        assert refused(lambda: bob.volume(made.id)).status_code == 404
        assert refused(lambda: bob.delete_volume("data")).status_code == 404
        theirs = refused(lambda: bob.create(volumes=[{"name": made.id, "path": "/mnt/x"}]))
        assert theirs.status_code == 422 and made.id in theirs.message
        assert bob.volumes() == []
        # A provider that cannot mount volumes refuses, naming itself: never a workspace without them.
        cannot = refused(lambda: alice.create(provider="e2b", volumes=[{"name": "data", "path": "/mnt/x"}]))
        assert cannot.status_code == 400 and "e2b" in cannot.message
        assert not providers["e2b"].sandboxes

        alice.delete(one.id)
        alice.delete(two.id)
        assert alice.volume("data").used_by == [] and keeper.volumes  # kept after the workspaces went
        alice.create_volume("other", "16M")
        full = refused(lambda: alice.create_volume("third", "16M"))
        assert full.status_code == 409 and "WORKSPACE_MAX_VOLUMES" in full.message
        alice.delete_volume("data")
        assert [v.name for v in alice.volumes()] == ["other"] and made.id not in keeper.volumes
        assert refused(lambda: alice.delete_volume("data")).status_code == 404


def test_without_a_provider_that_keeps_volumes_a_volume_is_refused(tmp_path: Path) -> None:
    app = build_app(tmp_path, {"gvisor": FakeProvider("gvisor")})
    with TestClient(app) as served, client(served, KEYS["alice"]) as alice:
        refusal = refused(lambda: alice.create_volume("data", "1G"))
        assert refusal.status_code == 400 and "keeps volumes" in refusal.message
        assert isinstance(alice, Client) and alice.volumes() == []


def test_the_cli_reads_name_path_and_ro() -> None:
    from agentbox.cli.volumes import parse_mount

    assert parse_mount("data:/mnt/data") == {"name": "data", "path": "/mnt/data", "read_only": False}
    assert parse_mount("data:/mnt/data:ro") == {"name": "data", "path": "/mnt/data", "read_only": True}
    assert parse_mount("data:/mnt/data:rw") == {"name": "data", "path": "/mnt/data", "read_only": False}
    for bad in ["data", "data:mnt", "data:/proc/x", "da/ta:/mnt"]:
        with pytest.raises(typer.Exit):
            parse_mount(bad)


def test_e2bs_sdk_makes_lists_mounts_and_destroys_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, providers: dict[str, FakeProvider]
) -> None:
    from e2b import Sandbox, SandboxException, Volume, VolumeException

    from tests.unit.apps import uvicorn_serving

    with uvicorn_serving(build_app(tmp_path, providers, WORKSPACE_MAX_VOLUME_SIZE="1G")) as url:
        monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/envd")
        monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
        monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
        volume = Volume.create("e2b-data")
        assert volume.volume_id.startswith("vol-") and volume.name == "e2b-data"
        assert providers["gvisor"].volumes == {volume.volume_id: 1 << 30}  # no size in E2B's: the server's
        assert [(v.volume_id, v.name) for v in Volume.list()] == [(volume.volume_id, "e2b-data")]
        assert Volume.get_info(volume.volume_id).name == "e2b-data"

        sandbox = Sandbox.create(volume_mounts={"/mnt/data": volume})
        (mounted,) = [s for s in providers["gvisor"].sandboxes.values() if s.id == sandbox.sandbox_id]
        mounts = [(m.volume, m.path, m.read_only) for m in mounted.spec.volumes]
        assert mounts == [(volume.volume_id, "/mnt/data", False)]
        with client_of(url) as alice:
            assert alice.volume("e2b-data").used_by == [sandbox.sandbox_id]
        with pytest.raises(VolumeException, match=sandbox.sandbox_id):
            Volume.destroy(volume.volume_id)  # in use: E2B's error naming the sandbox
        with pytest.raises(SandboxException, match="under /proc"):
            Sandbox.create(volume_mounts={"/proc/data": "e2b-data"})
        with pytest.raises(SandboxException, match="no volume 'nothing'"):
            Sandbox.create(volume_mounts={"/mnt/x": "nothing"})
        sandbox.kill()
        assert Volume.destroy(volume.volume_id) is True
        assert Volume.destroy(volume.volume_id) is False  # gone: the SDK's "not found"
        assert Volume.list() == [] and providers["gvisor"].volumes == {}


def client_of(url: str) -> Client:
    return Client(url, KEYS["alice"])
