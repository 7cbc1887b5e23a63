"""The Docker provider's own logic against a stand-in for the Engine API: a removal the engine does not
answer in time, and a workspace whose sandbox does not stay up as it boots. The real engine's side of
both is in tests/integration/test_recovery.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests.exceptions

from agentbox.errors import ProviderError, ProviderUnavailable, WorkspaceGone
from agentbox.providers.docker import removals
from agentbox.providers.docker.boot import probe_booted
from agentbox.providers.docker.disks import Disks
from agentbox.providers.docker.provider import DockerProvider


class OverloadedEngine:
    """The Engine API's removal as an overloaded engine answers it: not within the client's timeout, while
    it goes on removing the container (which is gone once `catches_up`)."""

    def __init__(self) -> None:
        self.api = self
        self.containers_left = {"ws-a", "ws-b"}
        self.caught_up = False

    def catches_up(self) -> None:
        self.caught_up = True
        self.containers_left.clear()

    def containers(self, all: bool, filters: dict[str, list[str]]) -> list[dict[str, str]]:
        workspace = filters["label"][0].partition("=")[2]
        return [{"Id": workspace}] if workspace in self.containers_left else []

    def remove_container(self, container: str, v: bool, force: bool) -> None:
        if not self.caught_up:
            raise requests.exceptions.ReadTimeout("UnixHTTPConnectionPool: Read timed out. (read timeout=120)")


@pytest.fixture
def engine() -> OverloadedEngine:
    return OverloadedEngine()


@pytest.fixture
def provider(tmp_path: Path, engine: OverloadedEngine, monkeypatch: pytest.MonkeyPatch) -> DockerProvider:
    monkeypatch.setattr(removals, "REMOVAL_RETRY_SECONDS", 0.01)
    client: Any = engine
    disks = Disks(tmp_path / "disks", "1000:1000")
    return DockerProvider(
        client,
        name="gvisor",
        oci_runtime="runsc",
        user="1000:1000",
        isolation="test",
        disks=disks,
        helper=tmp_path / "helper",
        instance="test",
    )


def until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_removal_the_engine_does_not_answer_in_time_is_finished_in_the_background(
    provider: DockerProvider, engine: OverloadedEngine
) -> None:
    disk = provider.disks.reserve("ws-a")
    with pytest.raises(ProviderUnavailable) as late:
        provider.destroy("agentbox-ws-a")
    assert "did not answer in time" in late.value.detail and "goes on in the background" in late.value.detail
    assert "try again" not in late.value.detail  # nothing for the caller to retry
    assert disk.exists()  # never before the container: the engine may still be using it
    provider.destroy("agentbox-ws-a")  # again meanwhile (reconciliation): the background has it in hand

    engine.catches_up()
    assert until(lambda: not disk.exists()), "the disk stayed after the engine removed the container"


def test_at_close_a_removal_under_way_gives_up_its_disk_at_once(
    provider: DockerProvider, engine: OverloadedEngine
) -> None:
    disks = [provider.disks.reserve("ws-a"), provider.disks.reserve("ws-b")]
    with pytest.raises(ProviderUnavailable):
        provider.destroy("agentbox-ws-a")
    provider.close()
    assert disks[0].exists() is False  # the engine never answered: the disk went all the same
    with pytest.raises(ProviderUnavailable):
        provider.destroy("agentbox-ws-b")  # after close, nothing goes on in the background
    assert disks[1].exists() is False


def not_running(container: str = "89f25e7a5b27") -> ProviderError:
    return ProviderError(f"exec: the Docker engine said: Container {container} is not running")


class Boot:
    """A container as the engine shows it while its sandbox boots: states one after another, and probes
    that fail until it runs."""

    def __init__(self, states: list[dict[str, Any]], failures: list[ProviderError]) -> None:
        self.states = states
        self.failures = failures
        self.probes = 0
        self.now = 0.0

    def probe(self) -> None:
        self.probes += 1
        if self.failures:
            raise self.failures.pop(0)

    def state(self) -> dict[str, Any]:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def run(self, patience: float = 60) -> None:
        probe_booted(self.probe, self.state, patience, sleep=self.sleep, clock=self.clock)


EXITED = {"Running": False, "Restarting": False, "ExitCode": 128, "Error": ""}
RESTARTING = {"Running": True, "Restarting": True, "ExitCode": 128, "Error": ""}
RUNNING = {"Running": True, "Restarting": False, "ExitCode": 0, "Error": ""}


def test_a_sandbox_that_ends_as_it_boots_is_probed_again_once_it_is_back() -> None:
    restarting = ProviderError(
        "exec: the Docker engine said: Container 89f25e7a5b27 is restarting, wait until the container is running"
    )
    boot = Boot([EXITED, RESTARTING, RUNNING], [not_running(), restarting, not_running()])
    boot.run()
    assert boot.probes == 4


def test_a_probe_refused_as_not_running_is_tried_again_though_the_sandbox_is_back_by_the_look() -> None:
    boot = Boot([RUNNING], [not_running()])  # it came back between the probe and the look
    boot.run()
    assert boot.probes == 2


def test_a_running_sandbox_that_fails_the_probe_fails_the_start_at_once() -> None:
    broken = ProviderError("the helper answered garbage")
    boot = Boot([RUNNING], [broken])
    with pytest.raises(ProviderError) as failed:
        boot.run()
    assert failed.value is broken and boot.probes == 1


def test_a_sandbox_that_never_comes_up_fails_the_start_saying_how_it_ended() -> None:
    ended = {"Running": False, "Restarting": False, "ExitCode": 1, "Error": "urpc method failed: EOF"}
    boot = Boot([ended], [not_running()] * 1000)
    with pytest.raises(ProviderError) as failed:
        boot.run(patience=30)
    assert "did not stay running for 30 s" in failed.value.detail
    assert "exit code 1, urpc method failed: EOF" in failed.value.detail and "start it again" in failed.value.detail
    assert boot.now == pytest.approx(30, abs=1)


def test_a_container_removed_meanwhile_is_gone_not_waited_for() -> None:
    boot = Boot([EXITED], [WorkspaceGone("exec: the container no longer exists")])
    with pytest.raises(WorkspaceGone):
        boot.run()
    assert boot.probes == 1
