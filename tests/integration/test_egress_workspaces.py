"""Egress by name for users: policies at create and PATCH, enforced by the server's own proxy and resolver.

Real gVisor workspaces made by a real server (its proxy on the workspace bridge's gateway, its resolver asking
the test's DNS server: WORKSPACE_EGRESS_UPSTREAM_DNS) and the stand-in internet of tests/egress_lab.py's
`World`: public-looking addresses routed into a namespace, names in a zone the test writes. Nothing leaves the
machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from agentbox.client import AllowOptions, APIError, Client
from agentbox.config import Settings
from agentbox.providers.docker.egress_gateway import SYSTEM_BUNDLE, EgressGateway
from agentbox.providers.docker.firewall import Firewall
from agentbox.providers.docker.network import WorkspaceNetwork
from agentbox.wire.network import AllowList
from tests.browser import launch
from tests.egress_lab import FETCH, World

from .conftest import KEYS, Server, egress_server, eventually

NETWORK = "agentbox-test-egress-ws-net"
KEY = "6a" * 32
SECRET = "sk-never-in-the-sandbox-81Qz"
DEFAULT_IMAGE = str(Settings.model_fields["image"].default)
PAGE_WAIT_MS = 30_000  # a page on a machine busy with the whole suite
A, B = World.ADDRESSES


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with World(tmp_path_factory.mktemp("egress-world")) as running:
        running.zone({"exact.test": [A], "a.wild.test": [A], "other.test": [B], "api.test": [A], "nope.test": [A]})
        yield running


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, world: World
) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("egress-served")
    with egress_server(
        path, docker_client, NETWORK, world, GITHUB_APP_ENCRYPTION_KEY=KEY, WORKSPACE_REAP_INTERVAL="2"
    ) as server:
        yield server


def fetch(client: Client, workspace_id: str, *urls: str) -> dict[str, str]:
    result = client.exec(workspace_id, ["python3", "-c", FETCH, json.dumps(urls)], timeout=120)
    assert result.exit_code == 0, result
    found = dict(json.loads(result.stdout))
    print(f"from {workspace_id}: {found}")
    return found


def refusals(client: Client, workspace_id: str) -> list[dict[str, object]]:
    return [dict(r.arguments) for r in client.audit(workspace_id).records if r.action == "EGRESS refused"]


def test_names_wildcards_cidrs_and_ports_are_enforced_and_refusals_audited(served: Server) -> None:
    policy: AllowOptions = {"allow": ["exact.test", "*.wild.test", f"{B}/32:80"], "deny": ["api.test"]}
    with served.client() as alice:
        workspace = alice.create(network=policy)
        try:
            assert workspace.network == AllowList.model_validate(policy)
            found = fetch(
                alice,
                workspace.id,
                "http://exact.test/",  # by exact name (Host)
                "https://a.wild.test/",  # by wildcard (SNI, passed through: the lab's CA is not the workspace's)
                f"http://{B}/",  # by CIDR and port
                f"http://{B}:8443/",  # the CIDR's other port: refused
                "http://api.test/",  # denied by name
                "http://nope.test/",  # not allowed: refused at the name lookup
            )
            assert found["http://exact.test/"] == "200", found
            assert found["https://a.wild.test/"] == "curl 60", found  # reached: only the certificate is not trusted
            assert found[f"http://{B}/"] == "200", found
            refused = [f"http://{B}:8443/", "http://api.test/", "http://nope.test/"]
            assert all(found[url] in ("403", "curl 6", "curl 7", "curl 52", "curl 56") for url in refused), found
            trail = refusals(alice, workspace.id)
            rules = {str(r["rule"]) for r in trail}
            # Refused at the name lookup, put down to the policy's entry that refused it
            assert any(
                r["name"] == "api.test" and r["protocol"] == "dns" and r["rule"] == "deny[0] api.test" for r in trail
            ), (rules, trail)
            assert any(r.get("port") == 8443 for r in trail), trail
            assert any(r["name"] == "nope.test" and "default deny" in str(r["rule"]) for r in trail), trail
        finally:
            alice.delete(workspace.id)


def test_a_patch_applies_to_the_next_connection_and_survives_a_restart(served: Server) -> None:
    with served.client() as alice:
        workspace = alice.create(network={"allow": ["exact.test"]})
        try:
            assert fetch(alice, workspace.id, "http://other.test/")["http://other.test/"] != "200"
            alice.set_network(workspace.id, {"allow": ["other.test"]})
            found = fetch(alice, workspace.id, "http://other.test/", "http://exact.test/")
            assert found == {"http://other.test/": "200", "http://exact.test/": found["http://exact.test/"]}, found
            assert found["http://exact.test/"] != "200", found
            served.stop()
            served.start()
            assert alice.get(workspace.id).network == AllowList.model_validate({"allow": ["other.test"]})
            found = fetch(alice, workspace.id, "http://other.test/", "http://exact.test/")
            assert found["http://other.test/"] == "200" and found["http://exact.test/"] != "200", found
        finally:
            alice.delete(workspace.id)


#: Makes an HTTPS request that the proxy puts the secret into and keeps its answer, then reads its own memory
#: (what gVisor lets a process read: another's /proc/PID/mem needs ptrace rights) for each needle (given
#: reversed, never whole in its arguments); prints what it found and how much it read.
MEMORY_PROBE = """
import json, sys, urllib.request
answer = urllib.request.urlopen("https://api.test/held", timeout=20).read()
# Each needle as two halves, never whole here: only a copy made elsewhere is found.
halves = {n: (n[-4:][::-1].encode(), n[:-4][::-1].encode()) for n in sys.argv[1:]}
found, read = {n: False for n in halves}, 0
mem = open("/proc/self/mem", "rb", 0)
for line in open("/proc/self/maps").read().splitlines():
    span, perms = line.split()[:2]
    low, high = (int(x, 16) for x in span.split("-"))
    if "r" not in perms or high - low > 1 << 30:
        continue
    try:
        mem.seek(low)
        data = mem.read(high - low)
    except (OSError, ValueError, OverflowError):
        continue
    read += len(data)
    for name, (head, tail) in halves.items():
        at = data.find(head)
        while at >= 0 and not found[name]:
            found[name] = data[at + len(head) : at + len(head) + len(tail)] == tail
            at = data.find(head, at + 1)
print(json.dumps({"read": read, **found}))
"""


def test_a_header_rule_reaches_the_server_and_the_secret_never_enters_the_workspace(
    served: Server, world: World
) -> None:
    policy: AllowOptions = {
        "allow": ["api.test"],
        "headers": [{"host": "api.test", "headers": {"Authorization": "Bearer ${e2b.secrets.API_TOKEN}"}}],
    }
    with served.client() as alice:
        with pytest.raises(APIError) as error:
            alice.create(network=policy)
        assert error.value.status_code == 422 and "API_TOKEN" in str(error.value.detail), error.value
        alice.put_secret("API_TOKEN", SECRET)
        workspace = alice.create(network=policy)
        try:
            out = alice.exec(
                workspace.id,
                ["curl", "-sS", "--max-time", "8", "-H", "Authorization: placeholder", "https://api.test/echo"],
                timeout=60,
            )
            assert out.exit_code == 0, out  # the workspace trusts the proxy's CA from its first command
            seen = [r for r in world.requests() if "api.test" in json.dumps(r)]
            assert any(SECRET in json.dumps(r) for r in seen), seen  # the server got the secret
            assert SECRET not in out.stdout + out.stderr
            probe = alice.exec(workspace.id, "env; grep -rs -- " + SECRET[:12] + " / --exclude-dir=proc | head -3")
            assert SECRET not in probe.stdout, probe
            # Nor in the memory of a process that made such a request: it finds the answer it got there (so the
            # secret would be found too), never the secret.
            needles = [SECRET[::-1], "hello from"[::-1]]
            scanned = alice.exec(workspace.id, ["python3", "-c", MEMORY_PROBE, *needles], timeout=120)
            found = json.loads(scanned.stdout)
            assert found["read"] > 1 << 20 and found["hello from"[::-1]], found
            assert not found[SECRET[::-1]], found
        finally:
            alice.delete(workspace.id)


def test_a_workspace_made_open_and_given_a_header_rule_later_trusts_the_proxy_and_is_fenced(
    served: Server, world: World
) -> None:
    # Every workspace with a network trusts the proxy's CA from its creation: a bundle cannot be changed under a
    # running workspace, and an "egress" one may get a policy with a header rule at any time.
    policy: AllowOptions = {
        "allow": ["api.test"],
        "headers": [{"host": "api.test", "headers": {"X-Api-Key": "${e2b.secrets.LATER_TOKEN}"}}],
    }
    later = "sk-given-after-create-4Tq9"
    with served.client() as alice:
        alice.put_secret("LATER_TOKEN", later)
        workspace = alice.create(network="egress")
        try:
            assert fetch(alice, workspace.id, f"http://{B}/")[f"http://{B}/"] == "200"  # open: straight out
            alice.set_network(workspace.id, policy)
            before = len(world.requests())
            out = alice.exec(workspace.id, ["curl", "-sS", "--max-time", "8", "https://api.test/echo"], timeout=60)
            assert out.exit_code == 0, out
            seen = [r for r in world.requests()[before:] if "api.test" in json.dumps(r)]
            assert any(later in json.dumps(r) for r in seen), seen  # the proxy added the header
            # Its firewall grant is gone: by name or by address, what the policy does not list is refused.
            found = fetch(alice, workspace.id, "http://other.test/", f"http://{B}/")
            assert found["http://other.test/"] == "curl 6" and found[f"http://{B}/"] == "403", found
            trail = refusals(alice, workspace.id)
            assert any(r["name"] == "other.test" and r["rule"] == "default deny" for r in trail), trail
        finally:
            alice.delete(workspace.id)


def test_an_open_workspace_trusts_the_proxy_only_on_top_of_its_images_own_bundle(
    served: Server, docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path
) -> None:
    # The CA alone, with SSL_CERT_FILE and the like pointing at it, would leave an open workspace of an image that
    # keeps its bundle elsewhere (Fedora's) trusting nothing but the proxy: such an image is left as it is.
    network = WorkspaceNetwork(NETWORK, Firewall.for_network(docker_client.api.inspect_network(NETWORK)))
    gateway = EgressGateway(
        docker_client, network, tmp_path, on_refusal=lambda *_: None, secrets=lambda *_: {}, upstreams=("192.0.2.1",)
    )
    try:
        ca = gateway.ca_cert.read_bytes()
        for _ in range(2):  # made, then found made
            assert gateway.trust(busybox_image, own_bundle_only=True) == ([], {})
            mounts, variables = gateway.trust(busybox_image)  # a policy workspace: the CA alone, as it reaches
            assert mounts[0][0].read_bytes() == ca and variables["SSL_CERT_FILE"] == SYSTEM_BUNDLE
            mounts, variables = gateway.trust(DEFAULT_IMAGE, own_bundle_only=True)
            assert [(target, read_only) for _, target, read_only in mounts] == [(SYSTEM_BUNDLE, True)], mounts
            bundle = mounts[0][0].read_bytes()
            assert bundle.endswith(ca) and bundle.count(b"BEGIN CERTIFICATE") > 50, len(bundle)
    finally:
        gateway.close()


def test_a_burst_of_creates_makes_one_bundle_each_whole(
    served: Server, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    # `make bench`'s burst of 20 creates met a 500: each create wrote the same partial file, and one renamed it
    # away under another's chmod.
    network = WorkspaceNetwork(NETWORK, Firewall.for_network(docker_client.api.inspect_network(NETWORK)))
    gateway = EgressGateway(
        docker_client, network, tmp_path, on_refusal=lambda *_: None, secrets=lambda *_: {}, upstreams=("192.0.2.1",)
    )
    try:
        with ThreadPoolExecutor(max_workers=12) as burst:
            made = list(burst.map(lambda _: gateway.trust(DEFAULT_IMAGE, own_bundle_only=True), range(12)))
        bundles = {mounts[0][0] for mounts, _ in made}
        assert len(bundles) == 1 and next(iter(bundles)).read_bytes().endswith(gateway.ca_cert.read_bytes())
        assert not list(next(iter(bundles)).parent.glob("*.partial"))
    finally:
        gateway.close()


@pytest.mark.parametrize(
    ("policy", "status", "says"),
    [
        ({"allow": ["not a name"]}, 422, "not a domain name"),
        ({"allow": ["1.2.3.0/33"]}, 422, "1.2.3.0/33"),
        ({"allow": ["exact.test:99999"]}, 422, "99999"),
        ({"allow": ["10.1.2.0/24"]}, 400, "may never reach"),
        ({"allow": ["169.254.169.254"]}, 400, "may never reach"),
    ],
)
def test_bad_rules_are_refused_naming_them(served: Server, policy: AllowOptions, status: int, says: str) -> None:
    with served.client() as alice, pytest.raises(APIError) as error:
        alice.create(network=policy)
    assert error.value.status_code == status and says in str(error.value.detail), error.value


def test_a_change_to_none_is_a_conflict_and_another_owner_gets_404(served: Server) -> None:
    with served.client() as alice, served.client("bob") as bob:
        workspace = alice.create(network={"allow": ["exact.test"]})
        try:
            with pytest.raises(APIError) as error:
                alice.set_network(workspace.id, "none")
            assert error.value.status_code == 409 and "new workspace" in str(error.value.detail)
            with pytest.raises(APIError) as error:
                bob.set_network(workspace.id, {"allow": ["other.test"]})
            assert error.value.status_code == 404
        finally:
            alice.delete(workspace.id)


def test_a_patch_back_to_egress_and_a_change_while_stopped_hold_after_a_restart(served: Server) -> None:
    # The firewall's grants come back from the database at a restart, not from the label written at create:
    # a workspace made with a policy and PATCHed to "egress" stays on the internet.
    with served.client() as alice:
        made_with_policy = alice.create(network={"allow": ["exact.test"]})
        made_open = alice.create(network="egress")
        try:
            alice.set_network(made_with_policy.id, "egress")
            assert fetch(alice, made_with_policy.id, f"http://{B}/")[f"http://{B}/"] == "200"
            # Changed while stopped: its start brings the new policy, not the one it stopped with.
            alice.set_network(made_open.id, {"allow": ["exact.test"]})
            alice.stop(made_open.id)
            alice.set_network(made_open.id, "egress")
            alice.start(made_open.id)
            assert fetch(alice, made_open.id, f"http://{B}/")[f"http://{B}/"] == "200"
            alice.stop(made_open.id)
            alice.set_network(made_open.id, {"allow": ["other.test"]})
            served.stop()
            served.start()
            assert fetch(alice, made_with_policy.id, f"http://{B}/")[f"http://{B}/"] == "200"
            alice.start(made_open.id)
            found = fetch(alice, made_open.id, "http://other.test/", "http://exact.test/")
            assert found["http://other.test/"] == "200" and found["http://exact.test/"] != "200", found
        finally:
            alice.delete(made_with_policy.id)
            alice.delete(made_open.id)


def test_the_warm_pool_never_hands_out_a_weaker_network_and_its_policy_survives_a_crash(
    tmp_path: Path, docker_client: docker.DockerClient, world: World
) -> None:
    network = "agentbox-test-egress-pool-net"
    pool = {
        "WORKSPACE_NETWORK_POLICY": json.dumps({"allow": ["exact.test"]}),
        "WORKSPACE_WARM_POOL_SIZE": "1",
        "WORKSPACE_REAP_INTERVAL": "1",
    }
    made: list[str] = []
    with egress_server(tmp_path, docker_client, network, world, **pool) as server, server.client() as alice:
        eventually(lambda: server.metrics()["agentbox_pool_ready"] == 1)
        pooled = set(server.containers(docker_client))
        # Another policy is a cold create with that policy, never the pool's container.
        other = alice.create(network={"allow": ["other.test"]})
        made.append(other.id)
        assert other.id not in pooled
        found = fetch(alice, other.id, "http://other.test/", "http://exact.test/")
        assert found["http://other.test/"] == "200" and found["http://exact.test/"] != "200", found
        # The server dies with the pooled workspace in it; the next one keeps it (it fits) and hands it out
        # under its policy.
        server.stop(kill=True)
        server.start()
        eventually(lambda: server.metrics()["agentbox_pool_ready"] == 1)
        claimed = alice.create()
        made.append(claimed.id)
        assert claimed.id in pooled
        found = fetch(alice, claimed.id, "http://exact.test/", "http://other.test/", f"http://{B}/")
        assert found["http://exact.test/"] == "200", found
        assert found["http://other.test/"] != "200" and found[f"http://{B}/"] != "200", found
        for workspace_id in made:
            alice.delete(workspace_id)


def cli(server: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTBOX_URL": server.url, "AGENTBOX_API_KEY": KEYS["alice"], "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "agentbox.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_the_cli_shows_and_changes_a_policy_and_names_a_bad_rule(served: Server, tmp_path: Path) -> None:
    workspace_id = cli(served, "ws", "create", "--allow", "exact.test", "--deny", "api.test").stdout.strip()
    with served.client() as alice:
        try:
            assert json.loads(cli(served, "ws", "network", workspace_id).stdout) == {
                "allow": ["exact.test"],
                "deny": ["api.test"],
            }
            shown = cli(served, "ws", "network", workspace_id, "--allow", "*.wild.test", "--allow", "other.test:80")
            assert json.loads(shown.stdout) == {"allow": ["*.wild.test", "other.test:80"]}
            found = fetch(alice, workspace_id, "http://a.wild.test/", "http://other.test/", "http://exact.test/")
            assert found["http://a.wild.test/"] == "200" and found["http://other.test/"] == "200", found
            assert found["http://exact.test/"] != "200", found
            bad = cli(served, "ws", "network", workspace_id, "--allow", "other.test", "--allow", "no such", check=False)
            said = " ".join(bad.stderr.split())
            assert bad.returncode == 1 and "422" in said and "allow" in said and "no such" in said, said
            policy = tmp_path / "policy.json"
            policy.write_text(json.dumps({"allow": ["exact.test"], "default": "deny"}))
            assert json.loads(cli(served, "ws", "network", workspace_id, "--network-file", str(policy)).stdout) == {
                "allow": ["exact.test"]
            }
            assert json.loads(cli(served, "ws", "network", workspace_id, "--network", "egress").stdout) == "egress"
            assert fetch(alice, workspace_id, f"http://{B}/")[f"http://{B}/"] == "200"
        finally:
            alice.delete(workspace_id)


@contextlib.contextmanager
def dashboard(server: Server) -> Iterator[Page]:
    """A Chromium page signed in to `server`'s dashboard as alice (failing the test if the page throws)."""
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.set_default_timeout(PAGE_WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/")
            page.get_by_label("API key").fill(KEYS["alice"])
            page.get_by_role("button", name="Sign in").click()
            # Signed in (the key kept in the tab) before any other page is asked for.
            expect(page.get_by_role("heading", name="Workspaces")).to_be_visible(timeout=PAGE_WAIT_MS)
            yield page
            assert errors == [], f"the page threw: {errors}"
        finally:
            browser.close()


def test_the_dashboard_shows_a_workspaces_policy_as_its_entries(served: Server) -> None:
    with served.client() as alice:
        policy: AllowOptions = {"allow": ["exact.test", f"{B}/32:80"], "deny": ["api.test"]}
        workspace = alice.create(network=policy)
        try:
            with dashboard(served) as page:
                page.goto(f"{served.url}/ui/#/w/{workspace.id}")
                expect(page.get_by_text(f"allow exact.test, {B}/32:80; deny api.test; otherwise deny")).to_be_visible(
                    timeout=PAGE_WAIT_MS
                )
        finally:
            alice.delete(workspace.id)


def test_the_dashboard_edits_a_policy_and_says_what_the_api_refused(served: Server) -> None:
    with served.client() as alice:
        workspace = alice.create(network={"allow": ["exact.test"], "deny": ["api.test"]})
        closed = alice.create(network="none")
        try:
            offers = {p.name: p.capabilities for p in alice.providers()}[workspace.provider]
            assert offers is not None and offers.egress_by_name  # what the page asks before it offers the form
            with dashboard(served) as page:
                page.goto(f"{served.url}/ui/#/w/{closed.id}")  # no network: nothing to edit (409 if asked)
                expect(page.get_by_role("heading", name=closed.id)).to_be_visible(timeout=PAGE_WAIT_MS)
                expect(page.get_by_role("button", name="Edit network")).to_have_count(0)

                page.goto(f"{served.url}/ui/#/w/{workspace.id}")
                expect(page.get_by_text("allow exact.test; deny api.test; otherwise deny")).to_be_visible(
                    timeout=PAGE_WAIT_MS
                )
                page.get_by_role("button", name="Edit network").click()
                form = page.get_by_role("form", name="Edit network")
                allow, deny = form.get_by_label("Allow (one a line)"), form.get_by_label("Deny (one a line)")
                expect(allow).to_have_value("exact.test")  # the form starts from the policy in force
                allow.fill("exact.test\nother.test:80,443")
                deny.fill("api.test\nnope.test")
                form.get_by_role("button", name="Save network").click()
                changed = "allow exact.test, other.test:80,443; deny api.test, nope.test; otherwise deny"
                expect(page.get_by_text(changed)).to_be_visible(timeout=PAGE_WAIT_MS)
                expect(form).to_have_count(0)
                new_policy = AllowList.model_validate(
                    {
                        "allow": ["exact.test", {"target": "other.test", "ports": ["80", "443"]}],
                        "deny": ["api.test", "nope.test"],
                    }
                )
                assert alice.get(workspace.id).network == new_policy
                assert fetch(alice, workspace.id, "http://other.test/") == {"http://other.test/": "200"}

                # Refused by the API: its detail beside the form, the policy as it was.
                page.get_by_role("button", name="Edit network").click()
                allow.fill("exact.test\n*.com")
                form.get_by_role("button", name="Save network").click()
                said = form.get_by_role("alert")
                expect(said).to_contain_text("'*.com': a wildcard needs at least two labels", timeout=PAGE_WAIT_MS)
                expect(said).not_to_contain_text("literal")  # the "egress"-or-"none" branch's noise is left out
                allow.fill("exact.test")
                form.get_by_label("Header rules (JSON, optional)").fill(
                    '{"host": "exact.test", "headers": {"Authorization": "Bearer ${e2b.secrets.NO_SUCH_SECRET}"}}'
                )
                form.get_by_role("button", name="Save network").click()
                expect(said).to_contain_text("no secret 'NO_SUCH_SECRET' of yours", timeout=PAGE_WAIT_MS)
                assert alice.get(workspace.id).network == new_policy
                expect(page.get_by_text(changed)).to_be_visible()

                # "egress": everything, no proxy; the page says so.
                form.get_by_label("Network").select_option("egress")
                expect(allow).to_be_hidden()
                form.get_by_role("button", name="Save network").click()
                expect(page.get_by_text("egress", exact=True)).to_be_visible(timeout=PAGE_WAIT_MS)
                assert alice.get(workspace.id).network == "egress"
        finally:
            alice.delete(workspace.id)
            alice.delete(closed.id)
