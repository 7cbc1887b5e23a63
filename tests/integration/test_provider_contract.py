"""The provider contract (tests/provider_contract.py) on every real provider: Docker under gVisor
and under runc, each through every way into its sandbox (the Engine API's exec, the helper's Unix
socket, the helper's TCP channel), and E2B through the official SDK against its stand-in."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from agentbox.providers.base import Provider, WorkspaceSpec
from agentbox.providers.docker import DockerProvider, install_helper
from agentbox.providers.docker.channel import TcpChannel
from agentbox.providers.docker.disks import Disks
from agentbox.providers.e2b import E2BProvider
from agentbox.sandbox.channel import Call, Invocation, Transport
from tests.provider_contract import CHECKS, spec

from .e2b_standin import DEFAULT_IMAGE, E2BStandIn


class Counted:
    """The Engine API's exec, counting the calls that reached a sandbox through it."""

    def __init__(self, inner: Transport, calls: list[list[str]]) -> None:
        self.inner = inner
        self.calls = calls

    def call(self, invocation: Invocation) -> Call:
        call = self.inner.call(invocation)  # WorkspaceGone when the sandbox is gone: no way in was missed
        self.calls.append(invocation.argv)
        return call


class ChannelOnly(DockerProvider):
    """A Docker provider whose every call must go through the helper's own channel (socket or TCP): a
    fall back to the Engine API's exec is recorded in `fallbacks`, which the test requires empty but for
    the probe of `start` (it may come before the restarted helper listens, and then goes through the
    engine by design)."""

    fallbacks: list[list[str]]

    def _fallback(self, ref: str) -> Transport:
        return Counted(super()._fallback(ref), self.fallbacks)


@pytest.fixture(
    params=["runsc", "runsc-socket", "runsc-tcp", "runc", "runc-socket", "runc-tcp", "e2b"],
)
def provider(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    e2b: E2BStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Provider]:
    if request.param == "e2b":
        for variable in ("E2B_API_URL", "E2B_SANDBOX_URL"):
            monkeypatch.setenv(variable, e2b.url)
        yield E2BProvider(e2b.api_key, instance="contract", default_image=DEFAULT_IMAGE, template="base")
        return
    runtime, _, channel = request.param.partition("-")
    options = dict(
        name=runtime,
        oci_runtime=runtime,
        user="1000:1000",
        isolation=runtime,
        disks=Disks(tmp_path / "disks", "1000:1000"),
        helper=install_helper(tmp_path / "bin"),
        instance="contract-" + tmp_path.name,
    )
    if not channel:  # the Engine API's exec alone
        yield DockerProvider(docker_client, **options)  # type: ignore[arg-type]
        return
    if channel == "socket":
        options["control_root"] = tmp_path / "run"
    else:  # on Docker's default bridge: the server reaches the helper at the container's address there
        options["tcp_channel"] = TcpChannel(7633, secrets.token_bytes(32), tmp_path / "secrets")
    provider = ChannelOnly(docker_client, **options)  # type: ignore[arg-type]
    provider.fallbacks = []
    yield provider
    missed = [argv for argv in provider.fallbacks if argv != ["probe"]]
    assert missed == [], f"calls that did not go over the {channel} channel: {missed}"


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_every_provider_keeps_the_contract(
    provider: Provider, check: Callable[[Provider, WorkspaceSpec], None]
) -> None:
    check(provider, spec(DEFAULT_IMAGE))
