"""E2B's network tests (`tests/sync/sandbox_sync/test_network.py`, `test_internet_access.py`) replayed through
the unmodified `e2b` SDK against agentbox, on a stand-in internet instead of the public one.

E2B's tests fetch 1.1.1.1 and 8.8.8.8; here they are the two public-looking addresses of tests/egress_lab.py's
`World` (a namespace on /32 routes from the host, HTTP and HTTPS servers, names in a zone this file writes, asked
by the server's resolver: WORKSPACE_EGRESS_UPSTREAM_DNS). Real gVisor sandboxes on a server with its egress proxy;
nothing leaves the machine. Which E2B test each one replays is in its docstring; the ones that cannot run here are
listed in notes/e2b-network-tests.md.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from e2b import ALL_TRAFFIC, Sandbox, SandboxException, Secret

from tests.egress_lab import FETCH, World

from .conftest import KEYS, Server, egress_server

NETWORK = "agentbox-test-e2b-net"
KEY = "6b" * 32
SECRET = "sk-e2b-never-in-the-sandbox-Q81z"


class E2BWorld(World):
    """The stand-in internet of this file: its own namespace, link and addresses, so that it runs beside
    test_egress_workspaces.py's."""

    NAMESPACE = "agentbox-test-e2b-world"
    ADDRESSES = ("198.51.100.93", "198.51.100.94")
    dns = "10.218.0.6"
    HOST_SIDE = "10.218.0.5"
    LINK = "abx-e2bw"


#: E2B's 1.1.1.1 and 8.8.8.8.
ONE, EIGHT = E2BWorld.ADDRESSES
REACHED = "200"

# Run in the sandbox: each URL fetched by curl; the HTTP status, or curl's exit code ("curl 7": refused, "curl 6":
# name refused by the resolver, "curl 28": timed out). `-k` for the servers' own certificate (the lab's upstream CA,
# which only the proxy trusts): whether the server was reached is the question, not its certificate.


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with E2BWorld(tmp_path_factory.mktemp("e2b-world")) as running:
        running.zone({"exact.test": [ONE], "other.test": [EIGHT], "api.test": [ONE]})
        yield running


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, world: World
) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("e2b-net-served")
    with egress_server(path, docker_client, NETWORK, world, GITHUB_APP_ENCRYPTION_KEY=KEY) as server:
        yield server


@pytest.fixture
def create(served: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Sandbox]]:
    """`Sandbox.create` of E2B's SDK pointed at the server by its own variables (nothing of E2B's cloud); what
    it made is killed after the test."""
    monkeypatch.setenv("E2B_API_URL", f"{served.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{served.url}/e2b/envd")
    monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
    monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
    made: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        made.append(Sandbox.create(timeout=300, **options))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.kill()


def fetch(sandbox: Sandbox, *urls: str, insecure: bool = True) -> dict[str, str]:
    command = ["python3", "-c", FETCH, json.dumps(urls), *(["-k"] if insecure else [])]
    done = sandbox.commands.run(shlex.join(command), timeout=120)
    found = dict(json.loads(done.stdout))
    print(f"from {sandbox.sandbox_id}: {found}")
    return found


def refused(outcome: str) -> bool:
    # 403: the proxy's answer to plain HTTP; a reset (52, 56), a refused connect (7) or name (6) otherwise.
    return outcome in ("403", "curl 6", "curl 7", "curl 35", "curl 52", "curl 56")


def test_allow_specific_ip_with_deny_all(create: Callable[..., Sandbox]) -> None:
    """E2B's `test_allow_specific_ip_with_deny_all`: deny everything, allow one address."""
    sandbox = create(network={"deny_out": [ALL_TRAFFIC], "allow_out": [ONE]})
    found = fetch(sandbox, f"https://{ONE}/", f"https://{EIGHT}/")
    assert found[f"https://{ONE}/"] == REACHED and refused(found[f"https://{EIGHT}/"]), found
    info = sandbox.get_info()
    assert info.allow_internet_access is False and info.network is not None
    assert (info.network.get("allow_out"), info.network.get("deny_out")) == ([ONE], [ALL_TRAFFIC])


def test_allow_out_by_name_with_deny_all(create: Callable[..., Sandbox]) -> None:
    """`allow_out` with a domain (E2B's docs; its test uses addresses only): the name and only it."""
    sandbox = create(network={"deny_out": [ALL_TRAFFIC], "allow_out": ["exact.test"]})
    found = fetch(sandbox, "https://exact.test/", "http://exact.test/", "https://other.test/", f"https://{EIGHT}/")
    assert found["https://exact.test/"] == REACHED and found["http://exact.test/"] == REACHED, found
    assert refused(found["https://other.test/"]) and refused(found[f"https://{EIGHT}/"]), found


def test_deny_specific_ip(create: Callable[..., Sandbox]) -> None:
    """E2B's `test_deny_specific_ip`: one address denied, the rest open."""
    sandbox = create(network={"deny_out": [EIGHT]})
    found = fetch(sandbox, f"https://{EIGHT}/", f"https://{ONE}/", "https://exact.test/")
    assert refused(found[f"https://{EIGHT}/"]), found
    assert found[f"https://{ONE}/"] == REACHED and found["https://exact.test/"] == REACHED, found


@pytest.mark.parametrize(
    "options",
    [{"network": {"deny_out": [ALL_TRAFFIC]}}, {"allow_internet_access": False}],
    ids=["deny_out_all_traffic", "allow_internet_access_false"],
)
def test_deny_all_traffic(create: Callable[..., Sandbox], options: dict[str, object]) -> None:
    """E2B's `test_deny_all_traffic` and `test_internet_access_disabled`: nothing reachable."""
    sandbox = create(**options)
    found = fetch(sandbox, f"https://{ONE}/", f"https://{EIGHT}/", "http://exact.test/")
    assert all(outcome.startswith("curl ") for outcome in found.values()), found
    assert sandbox.get_info().allow_internet_access is False


def test_allow_takes_precedence_over_deny(create: Callable[..., Sandbox]) -> None:
    """E2B's `test_allow_takes_precedence_over_deny`: everything denied, both addresses allowed."""
    sandbox = create(network={"deny_out": [ALL_TRAFFIC], "allow_out": [ONE, EIGHT]})
    found = fetch(sandbox, f"https://{ONE}/", f"https://{EIGHT}/")
    assert set(found.values()) == {REACHED}, found


def test_update_network_applies_restrictions(create: Callable[..., Sandbox]) -> None:
    """E2B's `test_update_network_applies_restrictions`, then the same sandbox opened and closed again at run
    time (`update_network({})`, `allow_internet_access=False`): each change applies to the next connection."""
    sandbox = create()
    urls = (f"https://{ONE}/", f"https://{EIGHT}/")
    assert set(fetch(sandbox, *urls).values()) == {REACHED}
    sandbox.update_network({"deny_out": [EIGHT]})
    found = fetch(sandbox, *urls)
    assert found[urls[0]] == REACHED and refused(found[urls[1]]), found
    sandbox.update_network({})
    assert set(fetch(sandbox, *urls).values()) == {REACHED}
    sandbox.update_network({"allow_internet_access": False})
    assert all(refused(outcome) for outcome in fetch(sandbox, *urls).values())
    assert sandbox.get_info().allow_internet_access is False


def test_update_network_clears_existing_rules(create: Callable[..., Sandbox]) -> None:
    """E2B's `test_update_network_clears_existing_rules`."""
    sandbox = create(network={"deny_out": [ALL_TRAFFIC], "allow_out": [ONE]})
    urls = (f"https://{ONE}/", f"https://{EIGHT}/")
    found = fetch(sandbox, *urls)
    assert found[urls[0]] == REACHED and refused(found[urls[1]]), found
    sandbox.update_network({})
    assert set(fetch(sandbox, *urls).values()) == {REACHED}
    info = sandbox.get_info()
    assert info.allow_internet_access is True and info.network is not None and not info.network.get("deny_out")


def test_a_sandbox_without_a_network_cannot_be_given_one(create: Callable[..., Sandbox]) -> None:
    """agentbox's one difference: a sandbox made with no network at all has no interface to give rules to."""
    sandbox = create(allow_internet_access=False)
    with pytest.raises(SandboxException, match="new workspace"):
        sandbox.update_network({"allow_out": [ONE]})


def test_firewall_transform_injects_headers_from_a_secret(
    create: Callable[..., Sandbox], served: Server, world: World
) -> None:
    """E2B's `test_firewall_transform_injects_headers` with a secret (`Secret.fill`, E2B's docs' name form) on an
    HTTPS server of the World: the server gets the header with the secret's value; the sandbox, which trusts
    the proxy's CA from its first command, never holds the value (environment, files, what curl saw)."""
    with served.client() as alice:
        alice.put_secret("api-token", SECRET)
    headers = {"Authorization": f"Bearer {Secret.fill('api-token')}", "X-Test-Token": "plain"}
    sandbox = create(network={"rules": {"api.test": [{"transform": {"headers": headers}}]}})
    found = fetch(sandbox, "https://api.test/headers", insecure=False)
    assert found["https://api.test/headers"] == REACHED, found
    seen = [r for r in world.requests() if r.get("path") == "/headers"]
    assert seen and seen[-1]["headers"].get("Authorization") == f"Bearer {SECRET}", seen
    assert seen[-1]["headers"].get("X-Test-Token") == "plain", seen
    shown = sandbox.get_info().network
    assert shown is not None and SECRET not in json.dumps(shown)
    assert shown.get("rules") == {"api.test": [{"transform": {"headers": headers}}]}
    out = sandbox.commands.run("curl -sS -v --max-time 8 https://api.test/headers 2>&1; env", timeout=60)
    probe = sandbox.commands.run(f"grep -rs -- {SECRET[:14]} / --exclude-dir=proc | head -3 || true", timeout=120)
    assert SECRET not in out.stdout + out.stderr and SECRET not in probe.stdout, probe.stdout
