"""Crash recovery: the server, a sandbox and the engine dying under load, for real."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from agentbox.client import APIError
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import BUSYBOX_IMAGE, WORKSPACE_LABEL, Server, container_id, eventually, reads_back
from .engines import second_engine

CGROUPS = Path("/sys/fs/cgroup")
# Calls to the engine count as unanswered after this long on the servers of the slow-engine tests (not 120 s).
ENGINE_TIMEOUT = "10"


def assert_consistent(server: Server, docker_client: docker.DockerClient) -> dict[str, WorkspaceOut]:
    """Every record has its container and disk, every container and disk its record; return the records."""
    with server.client() as alice:
        records = {w.id: w for w in alice.list()}
    eventually(lambda: set(server.containers(docker_client)) == set(records), timeout=30)
    eventually(lambda: server.disks() == set(records), timeout=30)
    return records


def test_kill_9_in_the_middle_of_20_parallel_creates_loses_and_leaks_nothing(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    server = Server(tmp_path, env={"WORKSPACE_MAX_CONCURRENT": "30", "WORKSPACE_REAP_INTERVAL": "1"}).start()
    answered: list[WorkspaceOut] = []
    failed: list[Exception] = []

    def create() -> None:
        try:
            with server.client() as alice:
                answered.append(alice.create())
        except (APIError, httpx.HTTPError) as exc:
            failed.append(exc)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    eventually(lambda: len(answered) >= 3, timeout=60, interval=0.05)
    server.stop(kill=True)
    for thread in threads:
        thread.join()
    assert 3 <= len(answered) < 20, "the kill should land in the middle of the burst"
    assert len(answered) + len(failed) == 20

    server.start()
    try:
        records = assert_consistent(server, docker_client)
        # Every workspace whose create was answered is still there and works.
        assert {w.id for w in answered} <= set(records)
        with server.client() as alice:
            for workspace_id, record in records.items():
                assert record.status == "running", record
                assert alice.exec(workspace_id, "echo ok").stdout == "ok\n"
            for workspace_id in records:
                alice.delete(workspace_id)
        assert server.containers(docker_client) == {} and server.disks() == set()
    finally:
        server.stop()


def test_restart_removes_orphans_and_marks_vanished_workspaces_failed(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    server = Server(tmp_path).start()
    with server.client() as alice:
        vanishing = alice.create()
        kept = alice.create(ephemeral=False)
    server.stop()
    docker_client.api.remove_container(f"agentbox-{vanishing.id}", force=True)
    orphan = docker_client.containers.run(
        busybox_image,
        ["sleep", "600"],
        detach=True,
        labels={WORKSPACE_LABEL: "ws-00000000deadbeef", "agentbox.instance": server.instance},
    )
    server.start()
    try:
        with pytest.raises(docker.errors.NotFound):
            orphan.reload()
        with server.client() as alice:
            failed = alice.get(vanishing.id)
            assert failed.status == "failed" and "disappeared" in str(failed.error)
            with pytest.raises(APIError) as error:
                alice.exec(vanishing.id, "true")
            assert error.value.status_code == 409
            assert alice.exec(kept.id, "echo kept").stdout == "kept\n"
            assert server.metrics()["agentbox_workspace_failures_total{stage=vanished}"] == 1
            # Deleting the failed one removes what was left of it (its disk).
            alice.delete(vanishing.id)
            alice.delete(kept.id)
        assert server.containers(docker_client) == {} and server.disks() == set()
    finally:
        server.stop()


def test_a_sandbox_that_dies_comes_back_by_itself_with_its_files(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    server = Server(tmp_path, env={"WORKSPACE_REAP_INTERVAL": "1"}).start()
    try:
        with server.client() as alice:
            workspace_id = alice.create().id
            alice.write_file(workspace_id, "/workspace/data.txt", b"survives")
            # What the host's OOM killer or a gVisor panic does: every host process of the sandbox dies.
            procs = CGROUPS / "pids" / "docker" / container_id(docker_client, workspace_id) / "cgroup.procs"
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):  # gone with the others already
                    os.kill(int(pid), signal.SIGKILL)
            eventually(lambda: reads_back(alice, workspace_id, "/workspace/data.txt", "survives"), 60, 0.5)
            eventually(lambda: alice.get(workspace_id).status == "running", timeout=30)
            alice.delete(workspace_id)
    finally:
        server.stop()


def test_the_server_survives_a_dockerd_restart(tmp_path: Path) -> None:
    runsc = json.loads(Path("/etc/docker/daemon.json").read_text())["runtimes"]["runsc"]
    with second_engine({"runtimes": {"runsc": runsc}}) as engine:
        server = Server(
            tmp_path,
            env={"DOCKER_HOST": engine.host, "WORKSPACE_IMAGE": BUSYBOX_IMAGE, "WORKSPACE_REAP_INTERVAL": "1"},
        ).start()
        try:
            with server.client() as alice:
                workspace_id = alice.create().id
                alice.write_file(workspace_id, "/workspace/data.txt", b"kept")
                engine.stop()
                started = time.monotonic()
                # While the engine is down: clean errors that say why, quickly; the database still answers.
                with pytest.raises(APIError) as error:
                    alice.create()
                assert error.value.status_code == 503 and "Docker engine" in str(error.value.detail)
                with pytest.raises(APIError) as error:
                    alice.exec(workspace_id, "true")
                # 503 (engine unreachable), or 409 if a reconciliation saw the engine stop it first.
                assert error.value.status_code in (409, 503), error.value
                assert alice.get(workspace_id).id == workspace_id
                assert server.health().status == "ok"
                assert time.monotonic() - started < 10
                time.sleep(2)  # a few reconciliation rounds fail meanwhile, and must not stop the loop

                engine.start()
                eventually(lambda: reads_back(alice, workspace_id, "/workspace/data.txt", "kept"), 60, 0.5)
                eventually(lambda: alice.get(workspace_id).status == "running", timeout=30)
                other = alice.create()
                alice.delete(other.id)
                alice.delete(workspace_id)
            assert server.disks() == set()
        finally:
            server.stop()


def shim_of(container: str) -> int:
    """The pid of the containerd shim that runs `container` (containerd-shim-runc-v2 -id <id>, under runc
    and runsc alike), not of a short-lived `start` or `delete` call of the same binary."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if (
                argv[0].endswith("containerd-shim-runc-v2")
                and "-id" in argv
                and argv[argv.index("-id") + 1] == container
                and not {"start", "delete"} & set(argv)
            ):
                return int(entry.name)
    raise AssertionError(f"no containerd shim runs container {container}")


@contextlib.contextmanager
def engine_stuck_on(container: str) -> Iterator[None]:
    """The engine as an overloaded one is, for one container, for real: its containerd shim is stopped
    (SIGSTOP), so whatever the engine asks of that container (a kill, and so a forced removal) waits,
    and the engine finishes it once the shim runs again. Other containers are not touched."""
    shim = shim_of(container)
    os.kill(shim, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(shim, signal.SIGCONT)


def test_a_delete_the_engine_does_not_answer_in_time_is_finished_in_the_background(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    server = Server(tmp_path, env={"WORKSPACE_ENGINE_TIMEOUT": ENGINE_TIMEOUT}).start()
    try:
        with server.client() as alice:
            workspace_id = alice.create().id
            alice.write_file(workspace_id, "/workspace/data.txt", b"on the disk")
            assert server.disks() == {workspace_id}
            with engine_stuck_on(container_id(docker_client, workspace_id)):
                with pytest.raises(APIError) as late:
                    alice.delete(workspace_id)
                assert late.value.status_code == 503, late.value
                assert f"workspace {workspace_id} is deleted" in late.value.message
                assert "in the background" in late.value.message and "answers 404" in late.value.message
                with pytest.raises(APIError) as gone:
                    alice.get(workspace_id)
                assert gone.value.status_code == 404  # as the answer said: deleted
                assert alice.list() == []
                # The disk waits for the container, which the engine has not removed yet.
                assert set(server.containers(docker_client)) == {workspace_id}
                assert server.disks() == {workspace_id}
            # The engine catches up; the container goes, then the disk, with nobody asking again.
            eventually(lambda: server.containers(docker_client) == {}, timeout=60)
            eventually(lambda: server.disks() == set(), timeout=30)
    finally:
        server.stop()


def test_a_server_stopped_while_a_removal_is_under_way_leaves_no_disk_mounted(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    server = Server(tmp_path, env={"WORKSPACE_ENGINE_TIMEOUT": ENGINE_TIMEOUT}).start()
    try:
        with server.client() as alice:
            workspace_id = alice.create().id
        with engine_stuck_on(container_id(docker_client, workspace_id)):
            with server.client() as alice, pytest.raises(APIError) as late:
                alice.delete(workspace_id)
            assert late.value.status_code == 503, late.value
            server.stop()
            # Its disk went with the server, though its container is still there (the engine is stuck on it).
            assert set(server.containers(docker_client)) == {workspace_id}
            assert server.disks() == set()
        # What the engine had not finished is finished by the engine, or by the next start's reconciliation.
        server.start()
        eventually(lambda: server.containers(docker_client) == {}, timeout=60)
        assert server.disks() == set()
    finally:
        server.stop()
