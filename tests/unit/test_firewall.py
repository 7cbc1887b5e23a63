"""The firewall's rules and allow-list resolution (pure logic; the real rules are tested in integration)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from agentbox.config import ConfigError, load_settings
from agentbox.errors import BadRequest
from agentbox.network import AllowList, columns_of, policy_of
from agentbox.providers.docker.firewall import (
    ALWAYS_BLOCKED,
    Firewall,
    connected_subnets,
    host_resolvers,
    resolve_allow_list,
)
from agentbox.providers.docker.network import mac_address

FIREWALL = Firewall(
    bridge="br-0123456789ab",
    tag="0123456789ab",
    blocked=(*ALWAYS_BLOCKED, IPv4Network("192.0.2.0/24")),
    resolvers=(IPv4Address("10.255.255.53"),),
)


def lookup(name: str) -> list[str]:
    return {"public.example": ["203.0.113.7", "203.0.113.8"], "inside.example": ["10.0.0.5"]}.get(name, [])


def test_rules_order_dns_then_never_then_each_workspace_then_reject() -> None:
    rules = FIREWALL.ruleset({"02:00:00:00:00:01": None, "02:00:00:00:00:02": ["203.0.113.7/32"]}).splitlines()
    fwd = [line for line in rules if line.startswith("-A AGENTBOX-FWD-0123456789ab")]
    assert fwd[0].endswith("--ctstate RELATED,ESTABLISHED -j RETURN")
    assert "-d 10.255.255.53/32 -p udp --dport 53 -j RETURN" in fwd[1]
    reject = "-j AGENTBOX-REJ-0123456789ab"
    assert all(line.endswith(reject) for line in fwd[3:-1])  # every blocked range, before any grant
    assert any(f"-d 169.254.0.0/16 {reject}" in line for line in fwd)
    assert fwd[-1] == "-A AGENTBOX-FWD-0123456789ab -j AGENTBOX-GRANT-0123456789ab"  # then the grants
    grants = [line for line in rules if line.startswith("-A AGENTBOX-GRANT-0123456789ab")]
    assert grants == [
        "-A AGENTBOX-GRANT-0123456789ab -m mac --mac-source 02:00:00:00:00:01 -j RETURN",
        "-A AGENTBOX-GRANT-0123456789ab -d 203.0.113.7/32 -m mac --mac-source 02:00:00:00:00:02 -j RETURN",
        f"-A AGENTBOX-GRANT-0123456789ab {reject}",  # everything else
    ]
    assert [line for line in rules if line.startswith("-A AGENTBOX-REJ-")] == [
        "-A AGENTBOX-REJ-0123456789ab -p tcp -j REJECT --reject-with tcp-reset",  # never rate-limited
        "-A AGENTBOX-REJ-0123456789ab -j REJECT --reject-with icmp-admin-prohibited",
    ]
    assert rules[-1] == "COMMIT"


def test_the_host_rejects_all_but_answers_and_ipv6_rejects_all() -> None:
    inp = [line for line in FIREWALL.ruleset({}).splitlines() if line.startswith("-A AGENTBOX-IN-")]
    assert len(inp) == 2 and "ESTABLISHED" in inp[0] and inp[1].endswith("-j AGENTBOX-REJ-0123456789ab")
    v6 = FIREWALL.ruleset({"02:00:00:00:00:01": None}, family=6)
    assert "--mac-source" not in v6 and "icmp6-adm-prohibited" in v6
    assert "-A AGENTBOX-GRANT-0123456789ab -j AGENTBOX-REJ-0123456789ab" in v6


def test_allow_lists_resolve_and_refuse_what_is_never_reachable() -> None:
    entries = ["203.0.113.0/28", "public.example", "203.0.113.7"]
    assert resolve_allow_list(entries, FIREWALL.blocked, lookup) == [
        "203.0.113.0/28",
        "203.0.113.7/32",
        "203.0.113.8/32",
    ]
    for entry, says in [
        ("inside.example", "lies in 10.0.0.0/8"),
        ("169.254.169.254", "lies in 169.254.0.0/16"),
        ("192.0.2.9", "192.0.2.0/24"),  # the host's own network
        ("100.100.100.200", "100.64.0.0/10"),
        ("nothing.example", "no IPv4 address"),
    ]:
        with pytest.raises(BadRequest, match=says):
            resolve_allow_list([entry], FIREWALL.blocked, lookup)


def test_the_host_networks_and_resolvers_are_read_from_the_kernel_and_resolv_conf(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default via 192.0.2.1
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 192.0.2.0/24
        "eth0\t006433C6\t020200C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 198.51.100.0/24 via a gateway
    )
    assert connected_subnets(routes) == [IPv4Network("192.0.2.0/24")]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver fd00::1\nsearch x\n")
    assert host_resolvers(resolv) == (IPv4Address("10.255.255.53"),)


def test_macs_are_stable_local_unicast_and_distinct() -> None:
    mac = mac_address("ws-0123456789abcdef")
    assert mac == mac_address("ws-0123456789abcdef") != mac_address("ws-0123456789abcdee")
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


def test_policies_round_trip_through_the_stored_columns() -> None:
    assert policy_of("none", None) == "none"
    assert policy_of("workspace_net", None) == "egress"
    assert policy_of("workspace_net", ["pypi.org"]) == AllowList(allow=["pypi.org"])
    for policy in ("none", "egress", AllowList(allow=["pypi.org"])):
        assert policy_of(**columns_of(policy, "workspace_net")) == policy  # type: ignore[arg-type]


def test_the_server_default_policy_is_read_from_the_environment() -> None:
    assert load_settings(WORKSPACE_NETWORK_POLICY="none").network_policy == "none"
    allow = load_settings(WORKSPACE_NETWORK_POLICY='{"allow": ["pypi.org", "203.0.113.0/24"]}').network_policy
    assert allow == AllowList(allow=["pypi.org", "203.0.113.0/24"])
    for bad in ("everything", '{"allow": [', '{"allow": ["10.0.0.0/99"]}'):
        with pytest.raises(ConfigError, match="WORKSPACE_NETWORK_POLICY"):
            load_settings(WORKSPACE_NETWORK_POLICY=bad)
