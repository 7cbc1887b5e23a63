"""The warm pool on a real engine: claims, refills, cold starts for other specs, shrinking at the cap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest

from agentbox.client import APIError

from .conftest import Server, eventually

POOL_SIZE = 2
CAP = 3


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[Server]:
    server = Server(
        tmp_path,
        env={
            "WORKSPACE_WARM_POOL_SIZE": str(POOL_SIZE),
            "WORKSPACE_MAX_CONCURRENT": str(CAP),
            "WORKSPACE_REAP_INTERVAL": "1",
        },
    ).start()
    yield server
    server.stop()


def ready(server: Server) -> float:
    return server.metrics()["agentbox_pool_ready"]


def test_a_default_create_claims_a_prebooted_container_and_the_pool_refills(
    pooled: Server, docker_client: docker.DockerClient
) -> None:
    eventually(lambda: ready(pooled) == POOL_SIZE)
    booted = dict(pooled.containers(docker_client))
    assert len(booted) == POOL_SIZE and set(booted.values()) == {"running"}

    with pooled.client("alice") as alice, pooled.client("bob") as bob:
        requested_at = datetime.now().astimezone()
        # What may differ per request without touching the container: owner, env, labels, TTL.
        workspace = alice.create(env={"GREETING": "hello"}, labels={"task": "42"}, ttl_days=0.5)
        assert workspace.id in booted  # one of the pre-booted containers, under its own id
        started = docker_client.api.inspect_container(f"agentbox-{workspace.id}")["State"]["StartedAt"]
        assert datetime.fromisoformat(started[:26] + "+00:00") < requested_at
        assert workspace.owner == "alice" and workspace.labels == {"task": "42"}
        assert workspace.status == "running" and workspace.ttl_days == 0.5
        assert alice.exec(workspace.id, "echo $GREETING from $(hostname)").stdout == (f"hello from {workspace.id}\n")
        with pytest.raises(APIError) as error:
            bob.get(workspace.id)
        assert error.value.status_code == 404
        assert [w.id for w in alice.list(labels={"task": "42"})] == [workspace.id]

        metrics = pooled.metrics()
        assert metrics["agentbox_workspace_creates_total{source=pool}"] == 1
        assert metrics["agentbox_pool_claims_total"] == 1
        assert metrics["agentbox_workspaces_active"] == 1
        assert metrics["agentbox_workspace_create_seconds_count{source=pool}"] == 1

        # The pool refills in the background: two ready again, besides the claimed one.
        eventually(lambda: ready(pooled) == POOL_SIZE)
        assert len(pooled.containers(docker_client)) == POOL_SIZE + 1
        alice.delete(workspace.id)


def test_requests_the_pool_cannot_serve_start_cold(pooled: Server, docker_client: docker.DockerClient) -> None:
    eventually(lambda: ready(pooled) == POOL_SIZE)
    booted = set(pooled.containers(docker_client))
    with pooled.client() as alice:
        for options in ({"memory": "256M"}, {"cpu": 0.5}, {"disk": "1G"}, {"provider": "docker"}):
            workspace = alice.create(**options)
            assert workspace.id not in booted, options
            alice.delete(workspace.id)
    metrics = pooled.metrics()
    assert metrics["agentbox_workspace_creates_total{source=cold}"] == 4
    assert metrics["agentbox_workspace_creates_total{source=pool}"] == 0
    assert set(pooled.containers(docker_client)) == booted  # untouched


def test_the_pool_shrinks_to_fit_the_cap_and_grows_back(pooled: Server, docker_client: docker.DockerClient) -> None:
    eventually(lambda: ready(pooled) == POOL_SIZE)
    with pooled.client() as alice:
        first = alice.create()
        second = alice.create()
        # Two active of a cap of three: room for one more, so the pool keeps only one.
        eventually(lambda: len(pooled.containers(docker_client)) == 3 and ready(pooled) == 1)
        third = alice.create()
        # The cap is reached: no idle containers beside the three workspaces...
        eventually(lambda: len(pooled.containers(docker_client)) == 3 and ready(pooled) == 0)
        assert pooled.metrics()["agentbox_workspace_creates_total{source=pool}"] == 3
        # ...and the cap still holds (pool containers never count as room).
        with pytest.raises(APIError) as error:
            alice.create()
        assert error.value.status_code == 429
        assert pooled.metrics()["agentbox_workspace_rejections_total"] == 1
        alice.delete(third.id)
        eventually(lambda: ready(pooled) == 1)
        alice.delete(first.id)
        alice.delete(second.id)
        eventually(lambda: ready(pooled) == POOL_SIZE)


def test_stopping_the_server_removes_idle_pool_containers_and_keeps_workspaces(
    pooled: Server, docker_client: docker.DockerClient
) -> None:
    eventually(lambda: ready(pooled) == POOL_SIZE)
    with pooled.client() as alice:
        kept = alice.create()
    eventually(lambda: ready(pooled) == POOL_SIZE)
    pooled.stop()
    assert pooled.containers(docker_client) == {kept.id: "running"}
    assert pooled.disks() == {kept.id}
    pooled.start()
    with pooled.client() as alice:
        assert alice.exec(kept.id, "echo still here").stdout == "still here\n"
        alice.delete(kept.id)
