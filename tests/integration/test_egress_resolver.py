"""The resolver agentbox gives a workspace with an egress policy, and the proxy trusting names only for
the addresses it gave (tests/egress_lab.py: the client resolves through its resolv.conf, as a workspace
does; the upstream DNS server is the lab's, answering from a zone the tests rewrite).

The resolver runs in the proxy's process, started by the supervisor with the lab's small bounds
(`RESOLVER`: 4 lookups in flight per client, 8 in all, 64 answers remembered per client, 1 s grace).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.egress_lab import CLIENT, DIRECT, GATEWAY_CLIENT_SIDE, RESOLVER, SERVERS, ZONE, Lab, usable

pytestmark = pytest.mark.skipif(usable() is not None, reason=usable() or "")

RESET = 35, 56  # curl: the TLS handshake, or the first read, ended by a reset
NOT_RESOLVED = 6  # curl: could not resolve the host
STATUS = ("-o", "-", "-w", "\n%{http_code}")

# Python in the client namespace: one question to the agentbox resolver from `source`, its rcode and
# answers as JSON.
_ASK = """
import json, socket, struct
from dnslib import DNSRecord
q = DNSRecord.question({name!r}, {qtype!r}).pack()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if {tcp!r} else socket.SOCK_DGRAM)
s.settimeout(5)
s.bind(({source!r}, 0))
s.connect(({server!r}, 53))
if {tcp!r}:
    s.sendall(struct.pack("!H", len(q)) + q)
    f = s.makefile("rb")
    data = f.read(struct.unpack("!H", f.read(2))[0])
else:
    s.send(q)
    data = s.recv(4096)
r = DNSRecord.parse(data)
rr = [[str(a.rname), a.rtype, str(a.rdata)] for a in r.rr]
print(json.dumps({{"rcode": r.header.rcode, "tc": r.header.tc, "rr": rr}}))
"""

# Python in the client namespace: `count` queries for distinct names from one socket (bound to `source`)
# sent at once, then every answer read; the rcodes counted. A query left unanswered fails the script.
_FLOOD = """
import json, socket
from dnslib import DNSRecord
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({source!r}, 0))
s.settimeout(10)
for i in range({count}):
    q = DNSRecord.question("{prefix}%d.flood.test" % i)
    q.header.id = i
    s.sendto(q.pack(), ({server!r}, 53))
rcodes = {{}}
seen = set()
while len(seen) < {count}:
    r = DNSRecord.parse(s.recv(4096))
    seen.add(r.header.id)
    rcodes[r.header.rcode] = rcodes.get(r.header.rcode, 0) + 1
print(json.dumps(rcodes))
"""

# Python in the client namespace: `count` names asked one after the other, each answer awaited.
_ONE_BY_ONE = """
import json, socket
from dnslib import DNSRecord
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
rcodes = []
for i in range({count}):
    s.sendto(DNSRecord.question("f%d.flood.test" % i).pack(), ({server!r}, 53))
    rcodes.append(DNSRecord.parse(s.recv(4096)).header.rcode)
print(json.dumps(rcodes))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("egress-dns")) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(lab: Lab) -> Iterator[None]:
    lab.refusals.clear()
    yield
    lab.zone()  # the lab's own zone again, whatever a test changed
    lab.policy(None, client=DIRECT)


def ask(lab: Lab, name: str, qtype: str = "A", *, tcp: bool = False, source: str = CLIENT) -> dict[str, object]:
    code = _ASK.format(name=name, qtype=qtype, server=GATEWAY_CLIENT_SIDE, tcp=tcp, source=source)
    result: dict[str, object] = json.loads(lab.in_client(code))
    return result


def test_an_allowed_name_resolves_through_the_agentbox_resolver_and_connects(lab: Lab) -> None:
    lab.policy({"allow": ["exact.test", "alias.test"]})
    found = lab.getent("exact.test")
    assert found.returncode == 0 and found.stdout.split()[0] == SERVERS[0], found
    assert lab.curl("https://exact.test/").out == f"hello from {SERVERS[0]} for exact.test\n"
    # Over TCP the same; AAAA is answered empty (workspaces have IPv4 only) and never asked upstream.
    assert ask(lab, "exact.test", tcp=True) == {"rcode": 0, "tc": 0, "rr": [["exact.test.", 1, SERVERS[0]]]}
    before = len(lab.dns_queries())
    assert ask(lab, "exact.test", "AAAA") == {"rcode": 0, "tc": 0, "rr": []}
    assert len(lab.dns_queries()) == before
    # A name that is an alias: the chain is answered, and the address is good for the name asked.
    assert ask(lab, "alias.test")["rr"] == [["alias.test.", 5, "exact.test."], ["exact.test.", 1, SERVERS[0]]]
    answer = lab.curl("http://alias.test/")
    assert answer.out == f"hello from {SERVERS[0]} for alias.test\n", answer
    assert lab.wait_refusals(0) == []


def test_a_denied_name_is_refused_by_the_resolver_at_once_never_asked_upstream_and_recorded(lab: Lab) -> None:
    lab.policy({"allow": ["exact.test", "*.wild.test"], "deny": ["deep.a.wild.test"]})
    assert lab.getent("other.test").returncode == 2  # glibc: not found (it gave up on REFUSED, no retry)
    assert ask(lab, "other.test") == {"rcode": 5, "tc": 0, "rr": []}  # REFUSED
    assert ask(lab, "deep.a.wild.test", "AAAA")["rcode"] == 5
    assert lab.curl("https://evilwild.test/").code == NOT_RESOLVED
    asked = {q["name"] for q in lab.dns_queries()}
    assert not asked & {"other.test", "deep.a.wild.test", "evilwild.test"}
    refusals = lab.wait_refusals(4)
    assert {(r.client, r.name, r.protocol, r.ip) for r in refusals} == {
        (CLIENT, name, "dns", "") for name in ("other.test", "deep.a.wild.test", "evilwild.test")
    }
    # Each put down to what refused it, as the proxy's refusals are: the deny entry, else the default.
    assert {r.name: r.rule for r in refusals} == {
        "other.test": "default deny",
        "deep.a.wild.test": "deny[0] deep.a.wild.test",
        "evilwild.test": "default deny",
    }
    # A client without a policy (an address the server gave none) is refused every name.
    assert ask(lab, "exact.test")["rcode"] == 0
    lab.policy(None)
    assert ask(lab, "exact.test")["rcode"] == 5


def test_an_allowed_name_sent_to_another_servers_address_is_refused_and_recorded(lab: Lab) -> None:
    lab.policy({"allow": ["exact.test"]})
    assert lab.curl("https://exact.test/").code == 0  # the resolver gave SERVERS[0] for exact.test
    before = len(lab.requests())
    # The allowed SNI, to the address of a server the policy does not allow: refused before any byte.
    spoofed = lab.curl("https://exact.test/", ip=SERVERS[2])
    assert spoofed.code in RESET, spoofed
    # And the allowed Host over plain HTTP: a 403.
    plain = lab.curl("http://exact.test/", *STATUS, ip=SERVERS[2])
    assert plain.out.endswith("403"), plain
    assert not [r for r in lab.requests()[before:] if r["server"] == SERVERS[2]]
    why = f"allow[0] exact.test: {SERVERS[2]} is not an address the agentbox resolver gave for exact.test"
    assert [(r.name, r.ip, r.port, r.protocol, r.rule.split(" (")[0]) for r in lab.wait_refusals(2)] == [
        ("exact.test", SERVERS[2], 443, "tls", why),
        ("exact.test", SERVERS[2], 80, "http", why),
    ]
    # Given for one client, not for another: the same name and address from a client never told it.
    lab.policy({"allow": ["exact.test"]}, client=DIRECT)
    assert ask(lab, "exact.test", source=DIRECT)["rcode"] == 0
    assert lab.curl("https://exact.test/").code == 0


def test_a_name_whose_address_changes_stays_allowed_and_its_old_address_expires(lab: Lab) -> None:
    lab.policy({"allow": ["moving.test:80"]})
    lab.zone({**ZONE, "moving.test": {"a": [SERVERS[1]], "ttl": 1}})
    first = lab.curl("http://moving.test/")
    assert first.out == f"hello from {SERVERS[1]} for moving.test\n", first
    lab.zone({**ZONE, "moving.test": {"a": [SERVERS[2]], "ttl": 1}})  # the record changes upstream
    moved = lab.curl("http://moving.test/")
    assert moved.out == f"hello from {SERVERS[2]} for moving.test\n", moved
    time.sleep(1 + RESOLVER.grace + 0.5)  # the old answer's TTL and the grace are over
    stale = lab.curl("http://moving.test/", *STATUS, ip=SERVERS[1])
    assert stale.out.endswith("403"), stale
    assert [(r.ip, "is not an address the agentbox resolver gave" in r.rule) for r in lab.wait_refusals(1)] == [
        (SERVERS[1], True)
    ]
    # Looked up again, the name reaches its new address.
    assert lab.curl("http://moving.test/").out == f"hello from {SERVERS[2]} for moving.test\n"


def test_a_flood_of_lookups_from_one_client_is_bounded_and_answered(lab: Lab) -> None:
    lab.policy({"allow": ["*.flood.test:80"]})
    lab.policy({"allow": ["exact.test"]}, client=DIRECT)
    before = len(lab.dns_queries())
    # 200 names the upstream answers after a second each, asked at once: every query is answered,
    # the ones past the client's 4 lookups in flight at once with SERVFAIL, none queued.
    code = _FLOOD.format(source=CLIENT, count=200, prefix="slow-", server=GATEWAY_CLIENT_SIDE)
    rcodes = json.loads(lab.in_client(code))
    assert sum(rcodes.values()) == 200
    assert rcodes.get("2", 0) > 0 and rcodes.get("0", 0) > 0, rcodes  # SERVFAIL, NOERROR
    upstream = [q for q in lab.dns_queries()[before:] if q["name"].startswith("slow-")]
    assert len(upstream) == rcodes["0"]
    assert max(q["concurrent"] for q in upstream) <= RESOLVER.client_in_flight
    # Another client is still answered.
    assert ask(lab, "exact.test", source=DIRECT)["rcode"] == 0
    # 80 more names, one by one (all answered): the client keeps its 64 most recent answers only.
    many = RESOLVER.answers_per_client + 16
    code = _ONE_BY_ONE.format(count=many, server=GATEWAY_CLIENT_SIDE)
    assert json.loads(lab.in_client(code)) == [0] * many
    forgotten = lab.curl("http://f0.flood.test/", *STATUS, ip=SERVERS[1])
    assert forgotten.out.endswith("403"), forgotten
    kept = lab.curl(f"http://f{many - 1}.flood.test/", *STATUS, ip=SERVERS[1])
    assert kept.out.endswith("200"), kept
