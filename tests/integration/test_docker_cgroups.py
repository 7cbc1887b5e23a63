"""A Docker workspace's usage and wake read its host cgroup without asking the engine once the provider has seen
the container: the usage sampler and the idle check look at every running workspace every few seconds, and each
call into a suspended workspace wakes it first (with 300 workspaces, 300 engine inspects a round otherwise;
bench/crowd.py). What they answer stays the engine's truth: a stopped workspace measures nothing, a started one is
measured again, a removed one is gone, and a suspended one is really thawed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agentbox.errors import WorkspaceGone
from agentbox.providers.docker import DockerProvider, install_helper
from agentbox.providers.docker.disks import Disks
from agentbox.providers.docker.freezer import container_freezer
from agentbox.sandbox.runtime import ExecRequest
from tests.provider_contract import spec

from .e2b_standin import DEFAULT_IMAGE


@pytest.fixture
def provider(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[DockerProvider]:
    yield DockerProvider(
        docker_client,
        name="gvisor",
        oci_runtime="runsc",
        user="1000:1000",
        isolation="runsc",
        disks=Disks(tmp_path / "disks", "1000:1000"),
        helper=install_helper(tmp_path / "bin"),
        instance="cgroups-" + tmp_path.name,
        control_root=tmp_path / "run",
    )


@pytest.fixture
def inspects(docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The containers the engine is asked to inspect from now on (the calls still go through)."""
    asked: list[str] = []
    real = docker_client.api.inspect_container

    def inspect(container: str) -> object:
        asked.append(container)
        return real(container)

    monkeypatch.setattr(docker_client.api, "inspect_container", inspect)
    return asked


def test_usage_and_wake_read_the_cgroup_without_the_engine_and_stay_true(
    provider: DockerProvider, docker_client: docker.DockerClient, inspects: list[str]
) -> None:
    ref = provider.create(spec(DEFAULT_IMAGE))
    try:
        container = docker_client.api.inspect_container(ref)["Id"]
        runtime = provider.runtime(ref)
        provider.suspend(ref)  # inspects (it must know that the container runs), and remembers its cgroup
        freezer = container_freezer(container)
        assert freezer is not None and freezer.frozen()
        inspects.clear()
        before = provider.usage(ref)
        for _ in range(10):
            provider.usage(ref)
        provider.wake(ref)
        assert not freezer.frozen()  # thawed for real: the workload answers
        runtime.exec(ExecRequest(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"]))
        after = provider.usage(ref)
        for _ in range(3):
            provider.suspend(ref)
            provider.wake(ref)
        assert inspects == [ref] * 3  # the suspends' own; no usage and no wake asked the engine
        assert before is not None and after is not None and before.memory_bytes > 0
        assert after.cpu_seconds > before.cpu_seconds  # the cgroup's own figures, read afresh each time

        provider.stop(ref)
        assert provider.usage(ref) is None  # no cgroup any more: the engine says it is stopped
        provider.wake(ref)  # nothing to thaw, and no error
        provider.start(ref)
        assert provider.usage(ref) is not None  # running again, under a cgroup made afresh
        provider.suspend(ref)
        time.sleep(0.2)
        provider.wake(ref)
        assert provider.runtime(ref).exec(ExecRequest(["true"])).exit_code == 0
    finally:
        provider.destroy(ref)
    with pytest.raises(WorkspaceGone):
        provider.usage(ref)
    provider.wake(ref)  # a removed workspace: nothing to wake, no error


def test_the_check_after_a_runsc_change_probes_a_suspended_sandbox_and_leaves_it_frozen(
    provider: DockerProvider, docker_client: docker.DockerClient
) -> None:
    ref = provider.create(spec(DEFAULT_IMAGE))
    try:
        provider.suspend(ref)
        details = docker_client.api.inspect_container(ref)
        freezer = container_freezer(details["Id"])
        assert freezer is not None and freezer.frozen()
        assert provider.reboot_unreachable() == []  # it answered its probe: not restarted
        assert freezer.frozen()  # and it waits as it did
        assert docker_client.api.inspect_container(ref)["State"]["StartedAt"] == details["State"]["StartedAt"]
        provider.wake(ref)
        assert provider.runtime(ref).exec(ExecRequest(["true"])).exit_code == 0
    finally:
        provider.destroy(ref)
