"""The firewall's chains as iptables holds them: one workspace's change touches only its own rules.

Real iptables, on chains of a bridge that does not exist (no traffic is involved: the rules
themselves are what is checked; test_network.py checks what workspaces can reach).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator

import pytest

from agentbox.providers.docker.firewall import ALWAYS_BLOCKED, Firewall
from agentbox.providers.docker.network import mac_address


@pytest.fixture
def firewall() -> Iterator[Firewall]:
    rules = Firewall(bridge="abx-fwtest0", tag="abxfwtest000", blocked=ALWAYS_BLOCKED, resolvers=(), ipv6=False)
    yield rules
    rules.remove()


def grant_rules(firewall: Firewall) -> list[str]:
    listed = subprocess.run(["iptables", "-w", "5", "-S", firewall.grant_chain], capture_output=True, text=True)
    return [line.lower() for line in listed.stdout.splitlines() if line.startswith("-A ")]


def rule(firewall: Firewall, workspace: str, cidr: str | None = None) -> str:
    destination = f"-d {cidr} " if cidr else ""
    return f"-a {firewall.grant_chain} {destination}-m mac --mac-source {mac_address(workspace)} -j return".lower()


def test_a_change_inserts_or_deletes_only_that_workspaces_rules(firewall: Firewall) -> None:
    firewall.adopt({mac_address(f"ws-{i}"): None for i in range(200)})
    before = grant_rules(firewall)
    assert len(before) == 201 and before[-1].endswith(f"-j {firewall.reject_chain}".lower())

    firewall.grant(mac_address("ws-new"), ["203.0.113.7/32", "198.51.100.0/24"])
    after = grant_rules(firewall)
    added = [line for line in after if line not in before]
    assert sorted(added) == sorted(
        [rule(firewall, "ws-new", "203.0.113.7/32"), rule(firewall, "ws-new", "198.51.100.0/24")]
    )
    assert after[-1] == before[-1]  # still rejecting whatever no grant matches, last

    firewall.revoke(mac_address("ws-7"))
    assert rule(firewall, "ws-7") not in grant_rules(firewall)
    assert set(grant_rules(firewall)) == set(after) - {rule(firewall, "ws-7")}
    firewall.revoke(mac_address("ws-7"))  # again: nothing to do, and no error


def test_concurrent_grants_all_land(firewall: Firewall) -> None:
    firewall.adopt({})
    threads = [threading.Thread(target=firewall.grant, args=(mac_address(f"ws-{i}"), None)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {rule(firewall, f"ws-{i}") for i in range(20)} <= set(grant_rules(firewall))
    assert len(grant_rules(firewall)) == 21


def test_after_a_flush_a_change_rewrites_the_whole_set(firewall: Firewall) -> None:
    firewall.adopt({mac_address("ws-1"): None, mac_address("ws-2"): ["203.0.113.7/32"]})
    subprocess.run(["iptables", "-w", "5", "-F", firewall.grant_chain], check=True)  # someone flushes it
    firewall.revoke(mac_address("ws-1"))  # its rule is gone already: the delete fails, the rewrite does not
    assert grant_rules(firewall) == [
        rule(firewall, "ws-2", "203.0.113.7/32"),
        f"-a {firewall.grant_chain} -j {firewall.reject_chain}".lower(),
    ]
