"""The workspace network (WORKSPACE_NETWORK_NAME), its firewall, and per-workspace network policies.

A network namespace started by the tests stands for the rest of the world: 198.51.100.2 and
.3 for the public internet (routed through the host, as the internet is), and 10.213.0.2 for
a private service of the infrastructure. Each runs an HTTP server on port 8080.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import docker.errors
import pytest

from agentbox.client import APIError, Client
from agentbox.wire.network import AllowList

from .conftest import (
    NETWORK,
    OTHER_PUBLIC,
    PRIVATE,
    PUBLIC,
    REJECTED,
    Server,
    address_of,
    answers,
    eventually,
    host_addresses,
    probe,
    remove_network,
)

SETUP_HOST = Path(__file__).parents[2] / "scripts" / "setup-host.sh"


@pytest.mark.parametrize("provider", ["gvisor", "docker"])
def test_a_workspace_reaches_the_internet_and_nothing_else(
    fenced: Server, docker_client: docker.DockerClient, host_listener: int, provider: str
) -> None:
    with fenced.client() as alice:
        first, second = alice.create(provider=provider), alice.create(provider=provider)
        try:
            assert first.network == "egress"  # the server's default
            for workspace in (first, second):
                settings = docker_client.api.inspect_container(f"agentbox-{workspace.id}")["NetworkSettings"]
                assert set(settings["Networks"]) == {NETWORK}  # that network and no other
            alice.exec(second.id, "python3 -m http.server 8080 >/dev/null 2>&1 &")
            neighbour = f"{address_of(docker_client, second.id)}:8080"
            eventually(lambda: answers(f"http://{neighbour}/"), timeout=30)  # the host reaches it...
            blocked = [
                neighbour,  # ...another workspace does not
                f"{PRIVATE}:8080",  # a private range
                "169.254.169.254:80",  # cloud metadata
                "100.100.100.200:80",
                "[fd00:ec2::254]:80",
                *(f"{address}:{host_listener}" for address in host_addresses(docker_client)),
            ]
            found = probe(alice, first.id, f"{PUBLIC}:8080", *blocked)
            assert found.pop(f"{PUBLIC}:8080") == "connected", found
            assert all(outcome in REJECTED for outcome in found.values()), found  # refused at once, not dropped
            # DNS works (Docker's embedded server forwards to the host's resolvers).
            lookup = alice.exec(first.id, ["python3", "-c", "import socket; socket.getaddrinfo('pypi.org', 443)"])
            assert lookup.exit_code == 0, lookup
        finally:
            for workspace in (first, second):
                alice.delete(workspace.id)


def test_an_allow_list_opens_only_its_destinations(fenced: Server) -> None:
    with fenced.client() as alice:
        workspace = alice.create(network={"allow": [OTHER_PUBLIC]})
        try:
            assert workspace.network == AllowList.model_validate({"allow": [OTHER_PUBLIC]})
            # Through the egress proxy: a TCP connect is accepted by the proxy whatever the destination, so what
            # tells is whether the destination answers (an HTTP request), refused at once otherwise.
            fetched = {}
            for address in (OTHER_PUBLIC, PUBLIC):
                out = alice.exec(
                    workspace.id,
                    ["curl", "-sS", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", f"http://{address}:8080/"],
                )
                fetched[address] = out.stdout if out.exit_code == 0 else f"curl {out.exit_code}"
            assert fetched[OTHER_PUBLIC] == "200", fetched
            assert fetched[PUBLIC] in ("403", "curl 7", "curl 52", "curl 56"), fetched  # never a timeout (28)
            found = probe(alice, workspace.id, f"{PRIVATE}:8080")
            assert found[f"{PRIVATE}:8080"] in REJECTED, found
        finally:
            alice.delete(workspace.id)


def test_network_none_leaves_only_loopback(fenced: Server) -> None:
    with fenced.client() as alice:
        workspace = alice.create(network="none")
        try:
            assert workspace.network == "none"
            interfaces = alice.exec(
                workspace.id, ["python3", "-c", "import socket; print([n for _, n in socket.if_nameindex()])"]
            )
            assert interfaces.stdout.strip() == "['lo']", interfaces
            found = probe(alice, workspace.id, f"{PUBLIC}:8080")
            assert found[f"{PUBLIC}:8080"] in REJECTED, found
        finally:
            alice.delete(workspace.id)


@pytest.mark.parametrize(
    ("policy", "status", "says"),
    [
        ({"allow": ["10.1.2.3"]}, 400, "may never reach"),
        ({"allow": ["169.254.169.254"]}, 400, "may never reach"),
        # A name is no longer resolved at create (the proxy follows it connection by connection): an
        # unknown one is refused at its lookup, inside the workspace (test_egress_workspaces.py).
        ({"allow": ["::1"]}, 422, "IPv4 only"),
        ({"allow": ["exact.test:0"]}, 422, "not a port"),
        ("everything", 422, "egress"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(
    fenced: Server, docker_client: docker.DockerClient, policy: object, status: int, says: str
) -> None:
    before = set(fenced.containers(docker_client))
    with fenced.client() as alice, pytest.raises(APIError) as error:
        alice.create(network=policy)
    assert error.value.status_code == status and says in str(error.value.detail), error.value
    assert set(fenced.containers(docker_client)) == before  # nothing made


def test_the_firewall_comes_back_after_a_flush(
    fenced: Server, docker_client: docker.DockerClient, host_listener: int
) -> None:
    with fenced.client() as alice:
        workspace_id = alice.create().id
        try:
            host = f"{host_addresses(docker_client)[0]}:{host_listener}"
            tag = docker_client.api.inspect_network(NETWORK)["Id"][:12]
            chain, bridge = f"AGENTBOX-IN-{tag}", f"br-{tag}"
            assert probe(alice, workspace_id, host)[host] in REJECTED
            # Someone flushes the rules (here: exactly ours, to leave the host's own alone).
            hook = ["INPUT", "-i", bridge, "-j", chain]
            subprocess.run(["iptables", "-D", *hook], check=True)
            subprocess.run(["iptables", "-F", chain], check=True)
            subprocess.run(["iptables", "-X", chain], check=True)
            # Within seconds the service notices, puts them back, and the host is out of reach again.
            eventually(lambda: subprocess.run(["iptables", "-C", *hook], capture_output=True).returncode == 0, 30)
            assert probe(alice, workspace_id, host)[host] in REJECTED
            assert "restored" in fenced.log()
        finally:
            alice.delete(str(workspace_id))


def test_the_firewall_outlives_a_dockerd_restart(fenced: Server, docker_client: docker.DockerClient) -> None:
    with fenced.client() as alice:
        workspace_id = alice.create().id
        try:
            pid = int(Path("/var/run/docker.pid").read_text())
            subprocess.run(["kill", "-TERM", str(pid)], check=True)
            eventually(lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
            subprocess.run(["bash", str(SETUP_HOST)], check=True, capture_output=True)  # starts it again
            # The workspace comes back by itself (restart policy), maybe with another address: the
            # firewall knows it by its MAC address, which stays.
            eventually(lambda: _running(alice, workspace_id), timeout=60)
            found = probe(alice, workspace_id, f"{PUBLIC}:8080", f"{PRIVATE}:8080", "169.254.169.254:80")
            assert found.pop(f"{PUBLIC}:8080") == "connected", found
            assert set(found.values()) <= REJECTED, found
        finally:
            alice.delete(workspace_id)


def _running(client: Client, workspace_id: str) -> bool:
    try:
        return client.exec(workspace_id, "true").exit_code == 0
    except APIError:
        return False


def test_a_server_without_the_network_refuses_allow_lists(alice: Client) -> None:
    with pytest.raises(APIError) as error:
        alice.create(network={"allow": [PUBLIC]})
    assert error.value.status_code == 400 and "WORKSPACE_NETWORK_NAME" in str(error.value.detail)


def test_an_existing_network_that_lets_containers_talk_is_refused(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    name = "agentbox-test-icc"
    remove_network(docker_client, name)
    docker_client.api.create_network(name, driver="bridge")
    try:
        with pytest.raises(RuntimeError) as error:
            Server(tmp_path, env={"WORKSPACE_NETWORK_NAME": name}).start()
        assert "allows traffic between containers" in str(error.value)
        assert "Traceback" not in str(error.value)
    finally:
        remove_network(docker_client, name)


def test_the_server_default_policy_applies_to_workspaces_that_do_not_ask(tmp_path: Path) -> None:
    server = Server(tmp_path, env={"WORKSPACE_NETWORK_POLICY": "none"}).start()
    try:
        with server.client() as alice:
            workspace = alice.create()
            assert workspace.network == "none"
            interfaces = alice.exec(workspace.id, ["cat", "/proc/net/dev"]).stdout
            assert "eth0" not in interfaces and "lo:" in interfaces
            alice.delete(workspace.id)
    finally:
        server.stop()


def test_a_workspace_from_the_warm_pool_is_fenced_like_any_other(
    tmp_path: Path, docker_client: docker.DockerClient, world: None
) -> None:
    network = "agentbox-test-pool-net"
    remove_network(docker_client, network)
    env = {"WORKSPACE_NETWORK_NAME": network, "WORKSPACE_WARM_POOL_SIZE": "1"}
    server = Server(tmp_path, env=env).start()
    try:
        eventually(lambda: server.metrics().get("agentbox_pool_ready") == 1, timeout=60)
        with server.client() as alice:
            workspace_id = alice.create().id  # claimed: no firewall change on this path
            assert server.metrics()["agentbox_pool_claims_total"] == 1
            found = probe(alice, workspace_id, f"{PUBLIC}:8080", f"{PRIVATE}:8080", "169.254.169.254:80")
            assert found.pop(f"{PUBLIC}:8080") == "connected", found
            assert set(found.values()) <= REJECTED, found
            alice.delete(workspace_id)
    finally:
        server.stop()
        remove_network(docker_client, network)


def test_a_network_of_another_deployment_is_refused(
    tmp_path: Path, docker_client: docker.DockerClient, fenced: Server
) -> None:
    # `fenced` made NETWORK; a second deployment (another database, so another instance) may not share it.
    with pytest.raises(RuntimeError) as error:
        Server(tmp_path, env={"WORKSPACE_NETWORK_NAME": NETWORK}).start()
    assert "belongs to another agentbox deployment" in " ".join(str(error.value).split()), str(error.value)[-500:]
