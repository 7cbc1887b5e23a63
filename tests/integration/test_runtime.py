"""Runtime choice: gVisor when it works, runc with the spec's warning when it does not."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agentbox.client import APIError, Client
from agentbox.providers.docker.platform_choice import read_record

from .conftest import Server, workspace_disk_mounts
from .engines import second_engine


def fallback_server(tmp_path: Path, docker_host: str) -> Server:
    return Server(tmp_path, env={"DOCKER_HOST": docker_host, "WORKSPACE_IMAGE": "agentbox-test/busybox:1"}).start()


def test_runsc_unregistered_gives_runc_workspaces_and_a_warning(tmp_path: Path) -> None:
    with second_engine({}) as engine:
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert health.runtime == "runc" and health.gvisor is False
            assert health.runtime_reason.startswith("gVisor runtime (runsc) not found")
            warnings = [line for line in server.log().splitlines() if " WARNING " in line]
            assert len([w for w in warnings if "gVisor runtime (runsc) not found" in w]) == 1, warnings
            with server.client() as alice:
                created = alice.create()
                try:
                    assert created.runtime == "runc" and created.provider == "gvisor"
                    # Under runc the workload sees the host's kernel, not gVisor's.
                    assert alice.exec(created.id, "uname -r").stdout.strip() == os.uname().release
                finally:
                    alice.delete(created.id)
        finally:
            server.stop()


def runsc(*args: str) -> dict[str, object]:
    return {"path": "/usr/bin/runsc", "runtimeArgs": [*args, "--network=host"]}


def test_registered_but_broken_runsc_is_probed_and_refused(tmp_path: Path) -> None:
    with second_engine({"runtimes": {"runsc": runsc("--platform=no-such-platform")}}) as engine:
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert health.runtime == "runc" and health.gvisor is False
            assert health.gvisor_platform is None and health.runsc_version is None
            assert "probe failed" in health.runtime_reason
            assert "gVisor runtime (runsc) is registered but its probe failed" in server.log()
        finally:
            server.stop()


def test_systrap_failing_falls_back_to_ptrace_with_a_warning(tmp_path: Path) -> None:
    # A platform this host cannot run stands for systrap failing; ptrace still works.
    config = {"runtimes": {"runsc": runsc("--platform=no-such-platform"), "runsc-ptrace": runsc("--platform=ptrace")}}
    with second_engine(config) as engine:
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert health.runtime == "runsc-ptrace" and health.gvisor is True
            assert health.gvisor_platform == "ptrace"
            assert str(health.runsc_version).startswith("0.0~")
            warnings = [line for line in server.log().splitlines() if " WARNING " in line]
            assert any("Falling back to runsc-ptrace" in line and "slower" in line for line in warnings), warnings
            with server.client() as alice:
                created = alice.create()
                try:
                    assert created.runtime == "runsc-ptrace"
                    assert alice.exec(created.id, "uname -r").stdout.strip() == "4.4.0"
                finally:
                    alice.delete(created.id)
        finally:
            server.stop()


def test_health_reports_runsc_version_and_platform(alice: Client) -> None:
    health = alice.health()
    assert health.runtime == "runsc" and health.gvisor is True
    # What `make test` installs: runsc from bookworm-backports, registered on the platform measured here.
    recorded = read_record()
    assert recorded is not None, "scripts/setup-host.sh measures gVisor's platforms and records the choice"
    assert health.gvisor_platform == recorded.chosen
    assert health.runsc_version == "0.0~20240729.0"
    assert f"platform {recorded.chosen}" in health.runtime_reason


# Debian bookworm's own runsc, the build before the upgrade to bookworm-backports'.
OLD_RUNSC = Path("/var/cache/agentbox-test/runsc-20221219")


@pytest.fixture(scope="module")
def old_runsc() -> str:
    """bookworm's runsc binary, unpacked from its package (downloaded once, kept in a cache)."""
    binary = OLD_RUNSC / "usr" / "bin" / "runsc"
    if not binary.exists():
        madison = subprocess.run(["apt-cache", "madison", "runsc"], capture_output=True, text=True).stdout
        versions = [line.split("|")[1].strip() for line in madison.splitlines() if "20221219" in line]
        assert versions, f"bookworm's runsc is not in the apt lists (apt-get update?): {madison!r}"
        with tempfile.TemporaryDirectory() as download:
            fetch = ["apt-get", "download", f"runsc={versions[0]}"]
            subprocess.run(fetch, cwd=download, capture_output=True, check=True)
            (package,) = Path(download).glob("runsc_*.deb")
            OLD_RUNSC.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(package), str(OLD_RUNSC)], check=True)
    return str(binary)


def test_workspaces_made_under_the_old_runsc_survive_the_upgrade(tmp_path: Path, old_runsc: str) -> None:
    before = {"runtimes": {"runsc": {"path": old_runsc, "runtimeArgs": ["--platform=ptrace", "--network=host"]}}}
    with second_engine(before) as engine, unmounting_disks_of(tmp_path):
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert (health.runtime, health.gvisor_platform) == ("runsc", "ptrace")
            assert health.runsc_version == "0.0~20221219.0"
            with server.client() as alice:
                running, stopped, doomed = (alice.create().id for _ in range(3))
                for workspace_id in (running, stopped, doomed):
                    alice.write_file(workspace_id, "/workspace/made-before.txt", workspace_id.encode())
                alice.stop(stopped)
                # The upgrade in place, as scripts/setup-host.sh does it: the new build takes over
                # the registration (on systrap) while the server and old sandboxes still run.
                engine.reload(
                    {"runtimes": {"runsc": runsc("--platform=systrap"), "runsc-ptrace": runsc("--platform=ptrace")}}
                )
                # Until the server restarts, an old sandbox says what happened and can still be deleted.
                with pytest.raises(APIError) as unreachable:
                    alice.exec(doomed, "true")
                assert unreachable.value.status_code == 502 and "another runsc build" in unreachable.value.detail
                alice.delete(doomed)
        finally:
            server.stop()
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert (health.runtime, health.gvisor_platform) == ("runsc", "systrap")
            assert "restarted 1 running workspace(s) under the new build" in server.log()
            with server.client() as alice:
                assert alice.exec(running, "cat /workspace/made-before.txt").stdout == running
                alice.start(stopped)
                for workspace_id in (running, stopped):
                    alice.stop(workspace_id)
                    alice.start(workspace_id)
                    assert alice.exec(workspace_id, "cat /workspace/made-before.txt").stdout == workspace_id
                    alice.delete(workspace_id)
                assert alice.list() == []
            assert not server.disks()
        finally:
            server.stop()


@contextmanager
def unmounting_disks_of(data_dir: Path) -> Iterator[None]:
    """A test that fails half-way through leaves no workspace disk mounted (its engine is wiped)."""
    try:
        yield
    finally:
        for mount in workspace_disk_mounts():
            if mount.startswith(f"{data_dir}/"):
                subprocess.run(["umount", "-l", mount], check=False)


def test_explicit_docker_provider_uses_runc(alice: Client) -> None:
    created = alice.create(provider="docker")
    try:
        assert created.provider == "docker" and created.runtime == "runc"
        assert alice.exec(created.id, "uname -r").stdout.strip() == os.uname().release
    finally:
        alice.delete(created.id)
