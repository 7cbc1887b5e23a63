"""The firewall's chains as iptables holds them: one workspace's change touches only its own rules, the
periodic check writes nothing while nothing is missing and repairs only what is, and nothing is left behind.

Real iptables (both families), on chains of a bridge that does not exist (no traffic is involved: the rules
themselves are what is checked; test_network.py checks what workspaces can reach). A rule that was not
written again keeps its packet counters, so counters set beforehand show what a change touched (IPv4
only: ip6tables-nft ignores the counters it is given); the commands run show what was written at all.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Iterator

import pytest

from agentbox.providers.docker import firewall as firewall_module
from agentbox.providers.docker.firewall import ALWAYS_BLOCKED, Firewall
from agentbox.providers.docker.network import mac_address

MARK = "[7:700]"  # the counters every rule gets before the step under test


def fresh(tag: str) -> Firewall:
    # The bridge's name is the tag too: iptables matches `-i` by name, whether or not it exists.
    return Firewall(bridge=f"abx-{tag[-8:]}", tag=tag, blocked=ALWAYS_BLOCKED, resolvers=(), ipv6=True)


@pytest.fixture
def firewall() -> Iterator[Firewall]:
    rules = fresh(f"abxfw{os.getpid() % 10**7:07d}")  # of this run alone: others may run these tests too
    yield rules
    rules.remove()


def grant_rules(firewall: Firewall) -> list[str]:
    listed = subprocess.run(["iptables", "-w", "5", "-S", firewall.grant_chain], capture_output=True, text=True)
    return [line.lower() for line in listed.stdout.splitlines() if line.startswith("-A ")]


def rule(firewall: Firewall, workspace: str, cidr: str | None = None) -> str:
    destination = f"-d {cidr} " if cidr else ""
    return f"-a {firewall.grant_chain} {destination}-m mac --mac-source {mac_address(workspace)} -j return".lower()


def ours(firewall: Firewall, family: int, counters: bool = False) -> list[str]:
    """Our chains' declarations and rules, and the jumps into them, as iptables-save lists them."""
    tool = "iptables-save" if family == 4 else "ip6tables-save"
    listed = subprocess.run([tool, *(["-c"] if counters else []), "-t", "filter"], capture_output=True, text=True)
    return [line for line in listed.stdout.splitlines() if firewall.tag in line]


def mark(firewall: Firewall) -> None:
    """Give every IPv4 rule of our chains the counters MARK (rewriting them all, once, before the step under test)."""
    rules = [f"{MARK} {line}" for line in ours(firewall, 4) if line.split()[1] in firewall.chains]
    text = "\n".join(["*filter", *(f":{chain} - [0:0]" for chain in firewall.chains), *rules, "COMMIT", ""])
    subprocess.run(["iptables-restore", "--noflush", "--counters"], input=text, text=True, check=True)


def written_again(firewall: Firewall) -> list[str]:
    """The IPv4 rules of our chains whose counters are no longer MARK: written (or inserted) since `mark`."""
    listed = [line.split(maxsplit=1) for line in ours(firewall, 4, counters=True) if line.startswith("[")]
    return [
        f"{counters} {line}" for counters, line in listed if line.split()[1] in firewall.chains and counters != MARK
    ]


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The iptables commands the firewall runs from now on (they still run), by program name."""
    ran: list[str] = []
    real = firewall_module._run

    def run(argv: list[str], stdin: str | None = None) -> str:
        ran.append(argv[0])
        return real(argv, stdin)

    monkeypatch.setattr(firewall_module, "_run", run)
    return ran


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


def test_other_workspaces_rules_are_never_written_again(firewall: Firewall, commands: list[str]) -> None:
    firewall.adopt({mac_address(f"ws-{i}"): None if i % 2 else ["203.0.113.7/32"] for i in range(200)})
    as_written = sorted(ours(firewall, 6))
    mark(firewall)
    commands.clear()
    firewall.grant(mac_address("ws-new"), ["203.0.113.7/32", "198.51.100.0/24"])
    firewall.revoke(mac_address("ws-7"))
    firewall.grant(mac_address("ws-8"), None)  # an allow list widened to the internet, in one transaction
    assert commands == ["iptables-restore"] * 3  # one each, no listing, no rewrite
    commands.clear()
    for _ in range(3):
        firewall.restore()  # the periodic check, with nothing missing: it reads, and writes nothing
    assert commands == ["iptables-save", "ip6tables-save"] * 3
    grant = firewall.grant_chain
    assert sorted(written_again(firewall)) == sorted(
        [
            f"[0:0] -A {grant} -d 203.0.113.7/32 -m mac --mac-source {mac_address('ws-new')} -j RETURN",
            f"[0:0] -A {grant} -d 198.51.100.0/24 -m mac --mac-source {mac_address('ws-new')} -j RETURN",
            f"[0:0] -A {grant} -m mac --mac-source {mac_address('ws-8')} -j RETURN",
        ]
    )
    assert rule(firewall, "ws-7") not in grant_rules(firewall)
    assert rule(firewall, "ws-8", "203.0.113.7/32") not in grant_rules(firewall)
    assert sorted(ours(firewall, 6)) == as_written


def test_a_full_flush_is_repaired_and_a_partial_one_only_where_it_hit(
    firewall: Firewall, caplog: pytest.LogCaptureFixture, commands: list[str]
) -> None:
    firewall.adopt({mac_address("ws-1"): None, mac_address("ws-2"): ["203.0.113.7/32", "198.51.100.0/24"]})
    as_written = {family: sorted(ours(firewall, family)) for family in (4, 6)}
    # Someone removes every trace of them, in both families (here exactly ours, to leave the host's own alone).
    for family, tool in ((4, "iptables"), (6, "ip6tables")):
        for builtin, chain in firewall.hooks(family):
            subprocess.run([tool, "-w", "5", "-D", builtin, "-i", firewall.bridge, "-j", chain], check=True)
        for command in ("-F", "-X"):
            for chain in firewall.chains:
                subprocess.run([tool, "-w", "5", command, chain], check=True)
    assert ours(firewall, 4) == ours(firewall, 6) == []
    with caplog.at_level(logging.WARNING, logger="agentbox.firewall"):
        firewall.restore()
    assert {family: sorted(ours(firewall, family)) for family in (4, 6)} == as_written
    assert "restored" in caplog.text

    # A rule of one workspace deleted, a blocked range gone, a stray rule that lets everything through.
    mark(firewall)
    ws1 = ["-m", "mac", "--mac-source", mac_address("ws-1"), "-j", "RETURN"]
    subprocess.run(["iptables", "-w", "5", "-D", firewall.grant_chain, *ws1], check=True)
    metadata = ["-d", "169.254.0.0/16", "-j", firewall.reject_chain]
    subprocess.run(["iptables", "-w", "5", "-D", firewall.forward_chain, *metadata], check=True)
    subprocess.run(["iptables", "-w", "5", "-I", firewall.grant_chain, "1", "-j", "ACCEPT"], check=True)
    commands.clear()
    firewall.restore()
    assert commands == ["iptables-save", "iptables-restore", "ip6tables-save"]  # IPv6 was intact
    assert {family: sorted(ours(firewall, family)) for family in (4, 6)} == as_written
    rewritten = written_again(firewall)
    # The forward chain is small and fixed: rewritten whole. In the grant chain, only ws-1's rule is new.
    assert {line.split()[2] for line in rewritten} == {firewall.grant_chain, firewall.forward_chain}
    assert [line for line in rewritten if line.split()[2] == firewall.grant_chain] == [
        f"[0:0] -A {firewall.grant_chain} {' '.join(ws1)}"
    ]


def test_grants_of_other_processes_stay_until_their_workspace_goes_and_startup_prunes(firewall: Firewall) -> None:
    firewall.adopt({mac_address("ws-1"): None, mac_address("ws-2"): None})
    replica = fresh(firewall.tag)  # a replica of the same deployment: the same network, the same chains
    replica.grant(mac_address("ws-3"), None)
    firewall.restore()
    assert rule(firewall, "ws-3") in grant_rules(firewall)  # not this process's, but not its to delete
    firewall.revoke(mac_address("ws-3"))  # the workspace is removed through this process
    assert rule(firewall, "ws-3") not in grant_rules(firewall)
    replica.grant(mac_address("ws-4"), ["203.0.113.7/32"])
    restarted = fresh(firewall.tag)
    restarted.adopt({mac_address("ws-1"): None})  # what the engine still has after ws-2 and ws-4 went
    assert grant_rules(firewall) == [
        rule(firewall, "ws-1"),
        f"-a {firewall.grant_chain} -j {firewall.reject_chain}".lower(),
    ]


def test_removing_the_firewall_leaves_nothing_behind(firewall: Firewall) -> None:
    firewall.adopt({mac_address(f"ws-{i}"): None for i in range(3)})
    assert ours(firewall, 4) and ours(firewall, 6)
    firewall.remove()
    assert ours(firewall, 4) == ours(firewall, 6) == []


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
    firewall.revoke(mac_address("ws-1"))  # its rule is gone already: the delete fails, the repair does not
    assert grant_rules(firewall) == [
        rule(firewall, "ws-2", "203.0.113.7/32"),
        f"-a {firewall.grant_chain} -j {firewall.reject_chain}".lower(),
    ]
