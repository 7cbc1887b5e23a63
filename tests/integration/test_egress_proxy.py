"""The egress proxy for real: a client namespace whose TCP is REDIRECTed to the proxy, real HTTP, HTTPS
and TCP servers in another namespace (tests/egress_lab.py; nothing leaves the machine).

The proxy runs as the server will run it: a child process (`python -m agentbox.egress`) under the
supervisor, policies sent over its control socket. Allowed names are resolved through the agentbox
resolver (as a workspace's are: the proxy lets a name reach only the addresses it gave); a name the
policy refuses is dialled at a pinned address instead (`ip=PINNED`), since the resolver would not
answer it: that is how these tests reach the proxy's own refusals (test_egress_resolver.py has the
resolver's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.egress_lab import CLIENT, OTHER, SERVERS, Lab, usable

pytestmark = pytest.mark.skipif(usable() is not None, reason=usable() or "")

PINNED = SERVERS[0]  # where every lab name leads; dialled directly for names the resolver refuses
RESET = 35, 56  # curl: the TLS handshake, or the first read, ended by a reset (a timeout would be 28)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("egress")) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(lab: Lab) -> None:
    lab.refusals.clear()
    lab.secrets.clear()


def refused(lab: Lab, count: int) -> list[tuple[str | None, str, int, str]]:
    """The refusals reported, once `count` have come (they come over the control socket, a moment later)."""
    return [(r.name, r.ip, r.port, r.rule) for r in lab.wait_refusals(count)]


def test_exact_name_passes_through_undecrypted_and_other_names_are_reset_at_once(lab: Lab) -> None:
    lab.policy({"allow": ["exact.test"]})
    ok = lab.curl("https://exact.test/")
    # Trusting the upstream CA alone: the certificate the client saw is the server's own.
    assert ok.code == 0 and ok.out == f"hello from {SERVERS[0]} for exact.test\n", ok
    assert "egress lab upstream CA" in ok.issuer, ok
    # Same address, another name in the SNI: refused before any byte reaches the server.
    denied = lab.curl("https://other.test/", ip=PINNED)
    assert denied.code in RESET, denied
    assert refused(lab, 1) == [("other.test", SERVERS[0], 443, "default deny")]
    assert lab.refusals[0].client == CLIENT and lab.refusals[0].protocol == "tls"
    assert not [r for r in lab.requests() if r["host"] == "other.test"]


def test_plain_http_is_matched_on_host_and_refused_with_a_403(lab: Lab) -> None:
    lab.policy({"allow": ["exact.test:80"]})
    assert lab.curl("http://exact.test/").out == f"hello from {SERVERS[0]} for exact.test\n"
    denied = lab.curl("http://other.test/", "-o", "-", "-w", "%{http_code}", ip=PINNED)
    assert denied.code == 0 and denied.out.endswith("403"), denied
    assert "not allowed" in denied.out
    # The port is part of the entry: the same name over HTTPS (443) is not allowed.
    assert lab.curl("https://exact.test/").code in RESET
    assert refused(lab, 2) == [
        ("other.test", SERVERS[0], 80, "default deny"),
        ("exact.test", SERVERS[0], 443, "default deny"),
    ]


def test_wildcard_matches_names_below_it_only(lab: Lab) -> None:
    lab.policy({"allow": ["*.wild.test"]})
    assert lab.curl("https://a.wild.test/").code == 0
    assert lab.curl("https://deep.a.wild.test/").code == 0
    assert lab.curl("https://WILD.test./", ip=PINNED).code in RESET  # not the apex (case and trailing dot aside)
    assert lab.curl("https://evilwild.test/", ip=PINNED).code in RESET  # not a name that merely ends alike
    assert [name for name, *_ in refused(lab, 2)] == ["wild.test", "evilwild.test"]


def test_deny_wins_over_a_matching_allow(lab: Lab) -> None:
    lab.policy({"allow": ["*.wild.test"], "deny": ["deep.a.wild.test"]})
    assert lab.curl("https://a.wild.test/").code == 0
    assert lab.curl("https://deep.a.wild.test/", ip=PINNED).code in RESET
    assert refused(lab, 1) == [("deep.a.wild.test", SERVERS[0], 443, "deny[0] deep.a.wild.test")]


def test_cidr_and_port_entries_match_connections_that_name_nothing(lab: Lab) -> None:
    lab.policy({"allow": [f"{SERVERS[0]}/32:443", {"target": "10.77.2.0/24", "ports": ["7000"]}]})
    # By address (curl sends no SNI to an address): the allowed address and port only.
    assert lab.curl(f"https://{SERVERS[0]}/").code == 0
    assert lab.curl(f"https://{SERVERS[0]}:8443/").code in RESET
    assert lab.curl(f"https://{SERVERS[1]}/").code in RESET
    # A protocol that is neither TLS nor HTTP goes by address and port.
    echo = (
        "import socket\n"
        f"s = socket.create_connection(('{SERVERS[2]}', 7000), timeout=5)\n"
        "s.sendall(b'ping through the proxy'); print(s.recv(100).decode())"
    )
    assert lab.in_client(echo).strip() == "ping through the proxy"
    assert refused(lab, 2) == [
        (None, SERVERS[0], 8443, "default deny"),
        (None, SERVERS[1], 443, "default deny"),
    ]


def test_a_policy_change_applies_to_the_next_connection(lab: Lab) -> None:
    lab.policy({"allow": ["exact.test"]})
    assert lab.curl("https://exact.test/").code == 0
    lab.policy({"allow": ["other.test"]})
    assert lab.curl("https://exact.test/", ip=PINNED).code in RESET
    assert lab.curl("https://other.test/").code == 0
    lab.policy(None)  # a client the proxy has no policy for is refused everything
    assert lab.curl("https://other.test/", ip=PINNED).code in RESET
    assert [name for name, *_ in refused(lab, 2)] == ["exact.test", "other.test"]


def test_a_header_rule_fills_a_secret_the_client_never_sees(lab: Lab) -> None:
    secret = "s3cret-value-never-in-the-sandbox"
    lab.secrets["API_TOKEN"] = secret
    rule = {"host": "api.test", "headers": {"Authorization": "Bearer ${e2b.secrets.API_TOKEN}", "X-Via": "agentbox"}}
    lab.policy({"allow": ["api.test", "exact.test"], "headers": [rule]})
    before = len(lab.requests())
    # The client trusts only the server's CA made per server, and sends its own Authorization.
    answer = lab.curl("https://api.test/", "-H", "authorization: Bearer fake", ca=lab.egress_ca)
    assert answer.code == 0, answer
    assert "agentbox egress CA" in answer.issuer
    assert secret not in answer.out + answer.err
    seen = lab.requests()[before:]
    assert [r["headers"].get("Authorization") for r in seen] == [f"Bearer {secret}"]
    assert seen[0]["headers"].get("X-Via") == "agentbox"
    assert "fake" not in str(seen[0]["headers"])
    assert lab.reveals[-1] == (CLIENT, "api.test", ["API_TOKEN"])
    # A name without header rules is still passed through undecrypted.
    assert "egress lab upstream CA" in lab.curl("https://exact.test/").issuer


def test_a_missing_secret_is_a_502_and_a_refusal_not_a_request_without_it(lab: Lab) -> None:
    rule = {"host": "api.test", "headers": {"Authorization": "Bearer ${e2b.secrets.GONE}"}}
    lab.policy({"allow": ["api.test"], "headers": [rule]})
    before = len(lab.requests())
    answer = lab.curl("https://api.test/", "-o", "-", "-w", "%{http_code}", ca=lab.egress_ca)
    assert answer.code == 0 and answer.out.endswith("502"), answer
    assert len(lab.requests()) == before
    assert [(r.name, r.rule) for r in lab.wait_refusals(1)] == [
        ("api.test", "secret unavailable: no secret named GONE")
    ]


def test_an_intercepted_upstream_must_prove_the_name(lab: Lab) -> None:
    # The server's certificate does not name "unlisted.test": the proxy will not send it a secret.
    lab.secrets["API_TOKEN"] = "x"
    rule = {"host": "*.nowhere.test", "headers": {"Authorization": "${e2b.secrets.API_TOKEN}"}}
    lab.policy({"allow": ["*.nowhere.test"], "headers": [rule]})
    before = len(lab.requests())
    answer = lab.curl("https://api.nowhere.test/", "-o", "-", "-w", "%{http_code}", ca=lab.egress_ca)
    assert answer.out.endswith("502"), answer
    assert len(lab.requests()) == before
    assert lab.wait_refusals(1)[-1].rule == "upstream certificate not valid for api.nowhere.test"


# In the client namespace: hold CAP connections through the proxy, then open `extra` more from the same address
# (each should be reset at once), then one from the other client's address (served). Prints what happened.
HOLD = """
import json, socket, sys
cap, extra, client, other, server = json.loads(sys.argv[1])
def dial(source):
    sock = socket.create_connection((server, 80), timeout=5, source_address=(source, 0))
    return sock
held = [dial(client) for _ in range(cap)]
outcomes = []
for _ in range(extra):
    try:
        sock = dial(client)
        sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        outcomes.append("answered" if sock.recv(100) else "closed")
    except ConnectionResetError:
        outcomes.append("reset")
    except TimeoutError:
        outcomes.append("hung")
sock = dial(other)
sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
first = sock.recv(100).decode(errors="replace").split("\\r\\n")[0]
held[0].sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
still = held[0].recv(100).decode(errors="replace").split("\\r\\n")[0]
print(json.dumps({"extra": outcomes, "other": first, "held": still}))
"""


def test_a_client_past_its_connection_cap_is_reset_at_once_while_another_still_connects(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cap, extra = 4, 12
    with Lab(tmp_path_factory.mktemp("egress-cap"), max_client_connections=cap) as capped:
        policy = {"allow": [f"{PINNED}/32:80"]}
        capped.policy(policy)
        capped.policy(policy, client=OTHER)
        found = json.loads(_hold(capped, cap, extra))
        assert found["extra"] == ["reset"] * extra, found
        assert found["other"].startswith("HTTP/1.1 200") and found["held"].startswith("HTTP/1.1 200"), found
        limits = [r for r in capped.wait_refusals(1) if r.rule.startswith("limit")]
        # One record for the whole burst (at most one a second per client): a flood does not flood the trail.
        assert [(r.client, r.ip, r.port, r.rule) for r in limits] == [
            (CLIENT, PINNED, 80, f"limit: {cap} connections from this client")
        ], limits


def _hold(lab: Lab, cap: int, extra: int) -> str:
    done = subprocess.run(
        [*lab.client(), sys.executable, "-c", HOLD, json.dumps([cap, extra, CLIENT, OTHER, PINNED])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
