"""Crash recovery: the server, a sandbox and the engine dying under load, for real."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import docker
import httpx
import pytest

from agentbox.client import APIError
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import BUSYBOX_IMAGE, WORKSPACE_LABEL, Server, container_id, eventually, reads_back
from .engines import second_engine

CGROUPS = Path("/sys/fs/cgroup")


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
