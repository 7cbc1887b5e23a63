"""What holds for every provider beyond the API tests that run over each (test_workspaces.py), and
what is particular to E2B: options mapped onto the SDK, misconfiguration, E2B being down."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import pytest

from agentbox.client import APIError, Client
from agentbox.providers.docker.platform_choice import read_record

from .conftest import Server, eventually
from .e2b_standin import E2BStandIn


def held_by(provider: str, workspace_id: str, docker_client: docker.DockerClient, e2b: E2BStandIn) -> bool:
    """Whether the provider still holds the workspace's sandbox."""
    if provider == "e2b":
        return any(s.metadata.get("agentbox.workspace.id") == workspace_id for s in e2b.sandboxes.values())
    try:
        docker_client.containers.get(f"agentbox-{workspace_id}")
    except docker.errors.NotFound:
        return False
    return True


@pytest.mark.parametrize("provider", ["gvisor", "docker", "e2b"])
def test_every_provider_runs_the_lifecycle_and_leaves_nothing(
    alice: Client, docker_client: docker.DockerClient, e2b: E2BStandIn, provider: str
) -> None:
    workspace = alice.create(provider=provider)
    workspace_id = workspace.id
    assert workspace.provider == provider and workspace.status == "running"
    assert held_by(provider, workspace_id, docker_client, e2b)
    alice.write_file(workspace_id, "/workspace/kept.txt", b"kept")
    assert alice.stop(workspace_id).status == "stopped"
    assert alice.start(workspace_id).status == "running"
    assert alice.read_file(workspace_id, "/workspace/kept.txt") == b"kept"
    alice.delete(workspace_id)
    assert not held_by(provider, workspace_id, docker_client, e2b)
    with pytest.raises(APIError) as gone:
        alice.exec(workspace_id, "true")
    assert gone.value.status_code == 404


def test_the_providers_list_says_what_each_runs_on_and_can_do(alice: Client) -> None:
    before = {p.name: p.active for p in alice.providers()}
    made = [alice.create(provider=name).id for name in ("gvisor", "docker", "e2b")]
    try:
        found = {p.name: p for p in alice.providers()}
        assert all(found[name].available and found[name].active == before[name] + 1 for name in found)
        gvisor, runc = found["gvisor"], found["docker"]
        recorded = read_record()  # set-up registers runsc on the platform it measured as the better here
        platform = recorded.chosen if recorded else "systrap"
        assert (gvisor.runtime, gvisor.platform, runc.runtime, runc.platform) == ("runsc", platform, "runc", None)
        for offers in (p.capabilities for p in found.values()):
            assert offers is not None and offers.processes and offers.watch
    finally:
        for workspace_id in made:
            alice.delete(workspace_id)


def test_e2b_sandboxes_carry_the_ttl_and_agentbox_s_ids(alice: Client, server: Server, e2b: E2BStandIn) -> None:
    workspace = alice.create(provider="e2b", ttl_days=0.01, labels={"job": "x"})
    try:
        (sandbox,) = [s for s in e2b.sandboxes.values() if s.metadata.get("agentbox.workspace.id") == workspace.id]
        assert sandbox.template == "base"  # the default image stands for WORKSPACE_E2B_TEMPLATE
        assert sandbox.metadata["agentbox.instance"] == server.instance
        assert (workspace.cpu, workspace.memory) == (2, "512M")  # what the template gave, as E2B reports it
        lifetime = (sandbox.end_at - sandbox.started_at).total_seconds()
        assert lifetime == pytest.approx(0.01 * 86400, abs=1)  # the TTL became E2B's timeout
        assert sandbox.end_at > datetime.now(UTC)
    finally:
        alice.delete(workspace.id)


def test_e2b_sizes_come_from_the_template_and_asking_for_others_says_so(alice: Client) -> None:
    with pytest.raises(APIError) as refused:
        alice.create(provider="e2b", cpu=4, memory="8G")
    assert (
        refused.value.status_code == 400
        and "cpu, memory" in refused.value.detail
        and "template" in refused.value.detail
    )


def test_e2b_enforces_no_network_and_refuses_what_it_cannot(alice: Client, e2b: E2BStandIn) -> None:
    interfaces = ["python3", "-c", "import socket; print(sorted(name for _, name in socket.if_nameindex()))"]
    created = alice.create(provider="e2b", network="none")
    try:
        assert created.network == "none"
        # Asked of E2B through its SDK (allow_internet_access=false), which the stand-in honours:
        # the sandbox has only its loopback.
        sandbox = next(s for s in e2b.sandboxes.values() if s.metadata["agentbox.workspace.id"] == created.id)
        assert alice.exec(created.id, interfaces).stdout.strip() == "['lo']", sandbox
    finally:
        alice.delete(created.id)
    with pytest.raises(APIError) as refused:
        alice.create(provider="e2b", network={"allow": ["203.0.113.7"]})
    assert refused.value.status_code == 400, refused.value
    assert "network 'allow'" in refused.value.detail and "e2b provider cannot enforce it" in refused.value.detail


def test_without_an_e2b_key_asking_for_e2b_says_what_is_missing(tmp_path: Path) -> None:
    server = Server(tmp_path / "a").start()
    try:
        with server.client() as alice, pytest.raises(APIError) as refused:
            alice.create(provider="e2b")
        assert refused.value.status_code == 400 and "E2B_API_KEY" in refused.value.detail
        assert "e2b" not in server.health().providers
        with server.client() as alice:
            e2b = {p.name: p for p in alice.providers()}["e2b"]
        assert not e2b.available and e2b.reason is not None and "E2B_API_KEY" in e2b.reason
    finally:
        server.stop()
    with pytest.raises(RuntimeError) as error:
        Server(tmp_path / "b", env={"WORKSPACE_DEFAULT_PROVIDER": "e2b"}).start()
    assert "WORKSPACE_DEFAULT_PROVIDER=e2b" in str(error.value) and "E2B_API_KEY" in str(error.value)


def test_e2b_down_gives_clean_errors_and_the_rest_keeps_working(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    standin = E2BStandIn(tmp_path / "e2b").start()
    env = {"E2B_API_KEY": standin.api_key, "E2B_API_URL": standin.url, "E2B_SANDBOX_URL": standin.url}
    server = Server(tmp_path / "server", env={**env, "E2B_CONNECTION_RETRIES": "0"}).start()
    try:
        with server.client() as alice:
            workspace_id = alice.create(provider="e2b").id
            standin.pause_service()
            started = time.monotonic()
            with pytest.raises(APIError) as down:
                alice.exec(workspace_id, "true")
            assert down.value.status_code in (502, 503) and "E2B" in down.value.detail, down.value
            with pytest.raises(APIError) as create:
                alice.create(provider="e2b")
            assert create.value.status_code in (502, 503) and "E2B" in create.value.detail, create.value
            assert time.monotonic() - started < 60
            # Other providers do not notice.
            other = alice.create(provider="docker")
            assert alice.exec(other.id, "echo fine").stdout == "fine\n"
            alice.delete(other.id)
            standin.resume_service()
            alice.delete(workspace_id)
            assert standin.sandboxes == {}
    finally:
        server.stop()
        standin.stop()


def test_e2b_sandboxes_are_kept_alive_for_as_long_as_their_workspace(tmp_path: Path) -> None:
    standin = E2BStandIn(tmp_path / "e2b").start()
    env = {"E2B_API_KEY": standin.api_key, "E2B_API_URL": standin.url, "E2B_SANDBOX_URL": standin.url}
    server = Server(tmp_path / "server", env={**env, "WORKSPACE_REAP_INTERVAL": "1"}).start()
    try:
        with server.client() as alice:
            workspace_id = alice.create(provider="e2b", ephemeral=False).id
            (sandbox,) = standin.sandboxes.values()
            assert (sandbox.end_at - sandbox.started_at).total_seconds() == pytest.approx(86400, abs=1)  # E2B's most
            # Twenty-three hours later (the stand-in's clock moved): the next rounds push it out again.
            sandbox.end_at = datetime.now(UTC) + timedelta(minutes=50)
            eventually(lambda: sandbox.end_at > datetime.now(UTC) + timedelta(hours=23), timeout=30)
            alice.delete(workspace_id)
    finally:
        server.stop()
        standin.stop()
