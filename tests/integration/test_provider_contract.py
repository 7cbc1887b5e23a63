"""The provider contract (tests/provider_contract.py) on every real provider: Docker under gVisor
and under runc, and E2B through the official SDK against its stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from agentbox.providers.base import Provider, WorkspaceSpec
from agentbox.providers.docker import DockerProvider, install_helper
from agentbox.providers.docker.disks import Disks
from agentbox.providers.e2b import E2BProvider
from tests.provider_contract import CHECKS, spec

from .e2b_standin import DEFAULT_IMAGE, E2BStandIn


@pytest.fixture(params=["runsc", "runc", "e2b"])
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
    yield DockerProvider(
        docker_client,
        name=request.param,
        runtime=request.param,
        user="1000:1000",
        isolation=request.param,
        disks=Disks(tmp_path / "disks", "1000:1000"),
        helper=install_helper(tmp_path / "bin"),
        instance="contract-" + tmp_path.name,
    )


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_every_provider_keeps_the_contract(
    provider: Provider, check: Callable[[Provider, WorkspaceSpec], None]
) -> None:
    check(provider, spec(DEFAULT_IMAGE))
