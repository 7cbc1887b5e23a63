"""Names and addresses held together: which names the resolver answers, which addresses a name may reach.

Pure and typed. Two questions, one per side of the egress:

- `answerable(policy, name)`: does the resolver look `name` up for this workspace at all? Yes when
  some connection naming it, to some address and port, could be allowed. So a name an allow entry
  matches is answered (unless a deny entry refuses it on every port and address), and every name
  is answered when the policy allows by address (a CIDR, or `default: allow`): the address rules
  decide those connections, and no name rule could tell which names lead to the allowed addresses.
  A GitHub grant's host is answered like a name of the allow list.
  A workspace whose policy allows names only can therefore not use the resolver as a tunnel: a
  query for any other name never leaves the host.
- `refusal(policy, name)`: the entry that refused a name the resolver does not answer (its audit row).
- `check(decision, answers, client, name, ip, now)`: a connection that a *name* entry allowed goes
  through only when the resolver gave `client` that address for that name (TTL plus grace not over,
  answers.py). Without it an allowed SNI or Host would open any address: the workspace dials
  the address of a server it may not reach and sends the allowed name. Address and default
  decisions are left as they are: they never trusted a name.
"""

from __future__ import annotations

import ipaddress

from agentbox.egress.answers import AnswerMemory
from agentbox.egress.rules import Decision, Entry, Policy, normalize_name

#: Past this many (port, address) points to try, `answerable` says yes without trying them all: the
#: lookup goes out, and the proxy still decides every connection. Only a policy with hundreds of
#: CIDRs each with many port ranges gets there.
MAX_POINTS = 4096


def answerable(policy: Policy, name: str) -> bool:
    """Whether some connection naming `name` could be allowed by `policy` (so the resolver answers it)."""
    host = normalize_name(name)
    if host is None:
        return False
    # Only the entries that could match a connection naming `host` bear on its decision: those of
    # this name, and address entries. The decision is constant between their port and address
    # boundaries, so trying each piece's first point answers exactly.
    relevant = [e for e in (*policy.allow, *policy.deny) if e.kind == "cidr" or e.matches(host, None, _any_port(e))]
    ports = sorted({*_boundary_ports(relevant), *(grant.port for grant in policy.github if grant.host == host)})
    addresses = _boundary_addresses(relevant)
    if len(ports) * len(addresses) > MAX_POINTS:
        return True
    return any(policy.decide(host, ip, port).allowed for port in ports for ip in addresses)


def refusal(policy: Policy, name: str) -> Decision:
    """Which entry refused `name` (`answerable` said no), for the audit trail as the proxy's refusals name theirs:
    a deny or address entry that refused a connection to it, else the default."""
    host = normalize_name(name)
    if host is None:
        return Decision(False, "not a host name")
    relevant = [e for e in (*policy.allow, *policy.deny) if e.kind == "cidr" or e.matches(host, None, _any_port(e))]
    points = [(ip, port) for port in _boundary_ports(relevant) for ip in _boundary_addresses(relevant)]
    for ip, port in points[:MAX_POINTS]:
        decision = policy.decide(host, ip, port)
        if not decision.allowed and decision.by != "default":
            return decision
    return Decision(False, f"default {policy.default}")


def check(decision: Decision, answers: AnswerMemory, client: str, name: str | None, ip: str, now: float) -> Decision:
    """`decision` itself, or a refusal when a name entry allowed it and `ip` was not given for the name."""
    if not decision.allowed or decision.by != "name" or name is None:
        return decision
    host = normalize_name(name)
    if host is not None and answers.gave(client, host, ip, now):
        return decision
    return Decision(
        False,
        f"{decision.rule}: {ip} is not an address the agentbox resolver gave for {host or name} (or its TTL is over)",
        "name",
    )


def _any_port(entry: Entry) -> int:
    return entry.port_ranges[0][0] if entry.port_ranges else 1


def _boundary_ports(entries: list[Entry]) -> list[int]:
    found = {1}
    for entry in entries:
        for low, high in entry.port_ranges:
            found.add(low)
            if high < 65535:
                found.add(high + 1)
    return sorted(found)


def _boundary_addresses(entries: list[Entry]) -> list[ipaddress.IPv4Address]:
    found = {ipaddress.IPv4Address(0)}
    for entry in entries:
        if entry.network is not None:
            found.add(entry.network.network_address)
            if int(entry.network.broadcast_address) < 2**32 - 1:
                found.add(entry.network.broadcast_address + 1)
    return sorted(found)
