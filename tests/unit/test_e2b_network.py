"""E2B's sandbox `network` as agentbox egress policies (agentbox.e2b_api.network), and back.

The bodies are made by E2B's own SDK (`build_network_config`, `build_network_update_body`: what
`Sandbox.create(network=...)` and `update_network` send), so a change in its wire form shows here.
What a policy means is asked of the policy itself (`Policy.decide`), against E2B's documented rule
written out independently (`e2b_allows`).
"""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import pytest
from e2b import Secret
from e2b.api.client.models import SandboxNetworkConfig
from e2b.sandbox.sandbox_api import SandboxNetworkOpts, build_network_config, build_network_update_body
from hypothesis import given
from hypothesis import strategies as st

from agentbox.e2b_api.network import ALL_TRAFFIC, Refused, from_create, from_update, to_info
from agentbox.egress.rules import Policy
from agentbox.web.proxy import request_host


def create_body(network: SandboxNetworkOpts) -> dict[str, Any]:
    """The create body's `network` as E2B's SDK sends it (camelCase JSON)."""
    built = build_network_config(network)
    assert built is not None
    wire: dict[str, Any] = SandboxNetworkConfig(**built).to_dict()
    return wire


def update_body(network: Any) -> dict[str, Any]:
    wire: dict[str, Any] = build_network_update_body(network).to_dict()
    return wire


def allowed(policy: Any, ip: str, name: str | None = None, port: int = 443) -> bool:
    if policy in ("egress", None):
        return True
    if policy == "none":
        return False
    return Policy.model_validate(policy).decide(name, ip, port).allowed


# test_network.py's sandboxes, as its tests make them ---------------------------------------------


def test_deny_all_with_allowed_addresses_is_an_allow_list() -> None:
    """test_allow_specific_ip_with_deny_all: only 1.1.1.1."""
    policy = from_create(create_body({"deny_out": lambda ctx: [ctx.all_traffic], "allow_out": ["1.1.1.1"]})).policy
    assert allowed(policy, "1.1.1.1")
    assert not allowed(policy, "8.8.8.8")
    assert not allowed(policy, "10.1.2.3", "example.com")


def test_a_denied_address_leaves_the_rest_open() -> None:
    """test_deny_specific_ip: 8.8.8.8 refused, the rest of the internet reachable."""
    policy = from_create(create_body({"deny_out": ["8.8.8.8"]})).policy
    assert isinstance(policy, dict)
    assert not allowed(policy, "8.8.8.8")
    assert allowed(policy, "1.1.1.1") and allowed(policy, "93.184.216.34", "example.com", 80)


def test_deny_all_traffic_is_no_network() -> None:
    """test_deny_all_traffic, and allow_internet_access=False: no network at all."""
    assert from_create(create_body({"deny_out": lambda ctx: [ctx.all_traffic]})).policy == "none"
    assert from_create(None, allow_internet_access=False).policy == "none"
    assert from_create({}, allow_internet_access=False).policy == "none"


def test_allow_takes_precedence_over_deny() -> None:
    """test_allow_takes_precedence_over_deny: E2B's rule, an allowed address in a denied range passes."""
    body = create_body({"deny_out": lambda ctx: [ctx.all_traffic], "allow_out": ["1.1.1.1", "8.8.8.8"]})
    policy = from_create(body).policy
    assert allowed(policy, "1.1.1.1") and allowed(policy, "8.8.8.8")
    assert not allowed(policy, "9.9.9.9")
    # Deny a range, allow one address in it: the address passes, its neighbours do not.
    policy = from_create(create_body({"deny_out": ["8.8.8.0/24"], "allow_out": ["8.8.8.8"]})).policy
    assert allowed(policy, "8.8.8.8") and not allowed(policy, "8.8.8.4") and allowed(policy, "1.1.1.1")


def test_allow_internet_access_false_keeps_allowed_destinations() -> None:
    """False 'behaves the same as denyOut 0.0.0.0/0', which allowOut still beats."""
    policy = from_create(create_body({"allow_out": ["1.1.1.1"]}), allow_internet_access=False).policy
    assert allowed(policy, "1.1.1.1") and not allowed(policy, "8.8.8.8")


def test_nothing_said_is_the_servers_default_and_public_traffic_is_apart() -> None:
    mapped = from_create(None)
    assert (mapped.policy, mapped.public_ports) == (None, None)
    mapped = from_create(create_body({"allow_public_traffic": False}))
    assert (mapped.policy, mapped.public_ports) == (None, False)
    assert from_create(create_body({"allow_public_traffic": True}), True).public_ports is True


def test_update_replaces_everything_and_an_empty_update_opens_the_network() -> None:
    """test_update_network_applies_restrictions / _clears_existing_rules: PUT replaces, {} clears."""
    policy = from_update(update_body({"deny_out": ["8.8.8.8"]}))
    assert not allowed(policy, "8.8.8.8") and allowed(policy, "1.1.1.1")
    assert from_update(update_body({})) == "egress"
    # The SDK sends allow_internet_access in snake case on update; both spellings are read.
    sent = update_body({"allow_internet_access": False})
    assert sent == {"allow_internet_access": False}
    # Never "none" at run time (a workspace cannot lose its interface): the policy that denies everything.
    for body in (sent, {"allowInternetAccess": False}, {"denyOut": [ALL_TRAFFIC]}):
        policy = from_update(body)
        assert isinstance(policy, dict) and not allowed(policy, "1.1.1.1") and not allowed(policy, "10.0.0.1", "a.com")
    policy = from_update(update_body({"allow_out": ["1.1.1.1"], "allow_internet_access": False}))
    assert allowed(policy, "1.1.1.1") and not allowed(policy, "1.0.0.1")


# names, DNS servers, header rules -------------------------------------------------------------------


def test_names_and_wildcards_in_allow_out() -> None:
    policy = from_create(
        create_body({"allow_out": ["api.example.com", "*.pypi.org"], "deny_out": [ALL_TRAFFIC]})
    ).policy
    assert allowed(policy, "192.0.2.7", "api.example.com")
    assert allowed(policy, "192.0.2.7", "files.pypi.org")
    assert not allowed(policy, "192.0.2.7", "pypi.org")  # a wildcard is below its apex only
    assert not allowed(policy, "192.0.2.7", "example.com")
    assert not allowed(policy, "192.0.2.7")  # a connection that names nothing


def test_a_name_in_allow_out_opens_the_dns_servers_to_every_port() -> None:
    """'When allowOut contains a domain, the servers in dnsServers (8.8.8.8 by default) are also allowed.'"""
    policy = from_create(create_body({"allow_out": ["example.com"], "deny_out": [ALL_TRAFFIC]})).policy
    assert allowed(policy, "8.8.8.8", port=53) and allowed(policy, "8.8.8.8", port=443)
    assert not allowed(policy, "8.8.4.4", port=53)
    policy = from_create(
        create_body({"allow_out": ["example.com"], "deny_out": [ALL_TRAFFIC], "dns_servers": ["1.1.1.1"]})
    ).policy
    assert allowed(policy, "1.1.1.1") and not allowed(policy, "8.8.8.8")
    policy = from_create(
        create_body({"allow_out": ["example.com"], "deny_out": [ALL_TRAFFIC], "dns_servers": []})
    ).policy
    assert not allowed(policy, "8.8.8.8")
    # Addresses only: no name, so no DNS server is opened.
    policy = from_create(create_body({"allow_out": ["1.1.1.1"], "deny_out": [ALL_TRAFFIC]})).policy
    assert not allowed(policy, "8.8.8.8")


def test_header_rules_with_secrets_become_header_rules_and_do_not_grant_egress() -> None:
    """test_firewall_transform_injects_headers: headers set on HTTPS requests to the rule's host."""
    network: SandboxNetworkOpts = {
        "allow_out": ["api.openai.com"],
        "deny_out": [ALL_TRAFFIC],
        "rules": {
            "api.openai.com": [
                {"transform": {"headers": {"Authorization": f"Bearer {Secret.fill('OPENAI_KEY')}"}}},
                {"transform": {"headers": {"X-Team": "a", "authorization": "Bearer ${e2b.secrets.LATER}"}}},
            ],
            "*.internal.example.com": [{"transform": {"headers": {"X-Token": "static"}}}],
        },
    }
    policy = from_create(create_body(network)).policy
    parsed = Policy.model_validate(policy)
    decision = parsed.decide("api.openai.com", "192.0.2.9", 443)
    assert decision.allowed and decision.intercept
    # A later transform replaces an earlier header of the same name, whatever its case.
    assert [dict(r.headers) for r in decision.headers] == [
        {"authorization": "Bearer ${e2b.secrets.LATER}", "X-Team": "a"}
    ]
    assert parsed.secret_names() == {"LATER"}
    # A rule grants nothing: its host is not in allowOut, so it is refused.
    assert not parsed.decide("a.internal.example.com", "192.0.2.9", 443).allowed


def test_a_rule_alone_leaves_the_internet_open_and_intercepts_its_host() -> None:
    policy = from_create(
        create_body({"rules": {"Echo.Example.com": [{"transform": {"headers": {"X-A": "1"}}}]}})
    ).policy
    parsed = Policy.model_validate(policy)
    assert parsed.decide("echo.example.com", "192.0.2.1", 443).intercept
    assert parsed.decide("other.example.com", "192.0.2.1", 443).allowed
    assert not parsed.decide("other.example.com", "192.0.2.1", 443).intercept


# what is refused, and the field it names --------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "field", "words"),
    [
        ({"maskRequestHost": "app.example.com\r\nX-Evil: 1"}, "maskRequestHost", "line breaks"),
        ({"maskRequestHost": "app .example.com"}, "maskRequestHost", "not a host[:port]"),
        ({"maskRequestHost": "https://app.example.com"}, "maskRequestHost", "no scheme"),
        ({"maskRequestHost": "app.example.com/path"}, "maskRequestHost", "not a host[:port]"),
        ({"maskRequestHost": "${PORT}-${PORT}.example.com"}, "maskRequestHost", "once at most"),
        ({"maskRequestHost": "${HOST}.example.com"}, "maskRequestHost", "not a host[:port]"),
        ({"maskRequestHost": "app.example.com:99999"}, "maskRequestHost", "1 to 65535"),
        ({"maskRequestHost": "app.example.com:8${PORT}"}, "maskRequestHost", "not a host[:port]"),
        ({"maskRequestHost": ""}, "maskRequestHost", "1 to 259 characters"),
        ({"maskRequestHost": "a" * 260}, "maskRequestHost", "1 to 259 characters"),
        ({"maskRequestHost": ".".join(["a" * 62] * 4) + ".${PORT}"}, "maskRequestHost", "longer than 253"),
        ({"httpsPorts": [3000]}, "httpsPorts", "plain HTTP"),
        ({"egressProxy": {"address": "proxy.example.com:1080"}}, "egressProxy", "SOCKS5"),
        ({"allowOut": ["*.com"]}, "allowOut[0]", "two labels"),
        ({"allowOut": ["1.1.1.1", "example.com:443"]}, "allowOut[1]", "not a domain"),
        ({"denyOut": ["::/0"]}, "denyOut[0]", "IPv4"),
        ({"dnsServers": ["8.8.8.0/24"], "allowOut": ["a.example.com"]}, "dnsServers[0]", "IPv4 address"),
        ({"dnsServers": ["8.8.8.8"] * 11}, "dnsServers", "at most 10"),
        ({"rules": {"10.0.0.0/8": [{"transform": {"headers": {"X-A": "1"}}}]}}, "rules.10.0.0.0/8", "per domain"),
        ({"rules": {"a.example.com": [{"transform": {"headers": {"Host": "x"}}}]}}, "rules.a.example.com", "frames"),
        (
            {"rules": {"a.example.com": [{"transform": {"headers": {"A": "${e2b.secrets.openai.api.key}"}}}]}},
            "rules.a.example.com",
            "not a secret placeholder",
        ),
        (
            {"rules": {"a.example.com": [{"transform": {"headers": {"A": "${e2b.identity.tokens.aws}"}}}]}},
            "rules.a.example.com",
            "iam",
        ),
        (
            {
                "rules": {
                    "*.example.com": [{"transform": {"headers": {"A": "1"}}}],
                    "api.example.com": [{"transform": {"headers": {"B": "2"}}}],
                }
            },
            "rules.api.example.com",
            "more specific",
        ),
        (
            {
                "rules": {
                    "API.example.com": [{"transform": {"headers": {"A": "1"}}}],
                    "api.example.com": [{"transform": {"headers": {"B": "2"}}}],
                }
            },
            "rules.api.example.com",
            "twice",
        ),
        ({"rules": {"a.example.com": [{"transform": {"body": "x"}}]}}, "rules.a.example.com.0.transform.body", "knows"),
        ({"allowOutt": ["1.1.1.1"]}, "allowOutt", "not a field"),
        ({"allowOut": "1.1.1.1"}, "allowOut", "list"),
    ],
)
def test_what_agentbox_cannot_honour_is_refused_naming_the_field(
    network: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(Refused) as caught:
        from_create(network)
    assert caught.value.field == field
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"network.{field}: ")


@pytest.mark.parametrize(
    "mask",
    [
        "${PORT}-app.example.test",
        "custom-host.example.com:${PORT}",
        "localhost:${PORT}",
        "app.example.com",
        "app.example.com:8443",
        "a${PORT}b.example.com.",
        "10.0.0.1:${PORT}",
        "[::1]:${PORT}",
        "under_score.example.com",
    ],
)
def test_a_host_mask_is_kept_as_given_and_changes_no_policy(mask: str) -> None:
    mapped = from_create({"maskRequestHost": mask, "httpsPorts": []})
    assert (mapped.request_host, mapped.policy) == (mask, None)


def test_no_host_mask_keeps_agentboxs_own_host() -> None:
    assert from_create({"allowPublicTraffic": True}).request_host is None
    assert request_host(None, 8000) == "localhost:8000"
    assert request_host("${PORT}-app.example.test", 8000) == "8000-app.example.test"
    assert request_host("app.example.test:${PORT}", 3000) == "app.example.test:3000"


def test_get_info_shows_the_mask_only_when_one_was_given() -> None:
    assert to_info(None, True, "${PORT}-app.example.test")["network"]["maskRequestHost"] == "${PORT}-app.example.test"
    assert "maskRequestHost" not in to_info(None, True)["network"]


def test_update_refuses_create_only_fields() -> None:
    with pytest.raises(Refused) as caught:
        from_update({"allowPublicTraffic": False})
    assert caught.value.field == "allowPublicTraffic"


def test_too_many_entries_name_e2b_field() -> None:
    with pytest.raises(Refused) as caught:
        from_create({"allowOut": [f"10.0.{i // 256}.{i % 256}" for i in range(300)]})
    assert caught.value.field == "allowOut"


# back: what E2B's GET sandbox shows ------------------------------------------------------------------


def test_info_shows_what_was_asked() -> None:
    network: SandboxNetworkOpts = {
        "allow_out": ["1.1.1.1", "api.example.com"],
        "deny_out": [ALL_TRAFFIC, "10.0.0.0/8"],
        "dns_servers": ["9.9.9.9"],
        "rules": {"api.example.com": [{"transform": {"headers": {"X-A": "${e2b.secrets.A}"}}}]},
        "allow_public_traffic": False,
    }
    body = create_body(network)
    mapped = from_create(body)
    info = to_info(mapped.policy, public_ports=False)
    assert info == {
        "allowInternetAccess": False,
        "network": {
            "allowPublicTraffic": False,
            "allowOut": ["1.1.1.1", "api.example.com"],
            "denyOut": [ALL_TRAFFIC, "10.0.0.0/8"],
            "dnsServers": ["9.9.9.9"],
            "rules": {"api.example.com": [{"transform": {"headers": {"X-A": "${e2b.secrets.A}"}}}]},
        },
    }
    # ...and what it shows, sent again, is the same policy.
    again = {k: v for k, v in info["network"].items() if k != "allowPublicTraffic"}
    assert from_update(again) == mapped.policy


def test_info_of_agentbox_policies() -> None:
    assert to_info("egress", True) == {"allowInternetAccess": True, "network": {"allowPublicTraffic": True}}
    assert to_info(None, True)["allowInternetAccess"] is True
    assert to_info("none", False) == {
        "allowInternetAccess": False,
        "network": {"allowPublicTraffic": False, "denyOut": [ALL_TRAFFIC]},
    }
    # The old allow list, and a policy of agentbox's own API (default deny, a port).
    old = to_info({"allow": ["pypi.org", "10.0.0.0/8"]}, False)["network"]
    assert old["allowOut"] == ["pypi.org", "10.0.0.0/8"] and old["denyOut"] == [ALL_TRAFFIC]
    assert old["dnsServers"] == []
    native = to_info({"allow": [{"target": "db.internal", "ports": ["5432"]}]}, False)["network"]
    assert native["allowOut"] == ["db.internal:5432"]


# any valid body: a policy agentbox accepts, meaning E2B's rule -------------------------------------------

LABEL = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
DOMAIN = st.tuples(st.lists(LABEL, min_size=1, max_size=2), st.sampled_from(["com", "org", "dev"])).map(
    lambda parts: ".".join([*parts[0], parts[1]])
)
OCTETS = st.tuples(*[st.integers(0, 255)] * 4).map(lambda o: ".".join(map(str, o)))
CIDR = st.tuples(OCTETS, st.integers(0, 32)).map(lambda p: str(ipaddress.ip_network(f"{p[0]}/{p[1]}", strict=False)))
ENTRY = st.one_of(OCTETS, CIDR, DOMAIN, DOMAIN.map(lambda d: f"*.{d}"), st.just(ALL_TRAFFIC))
SECRET = st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True)
HEADER_VALUE = st.one_of(
    st.text(string.ascii_letters + " -", max_size=12), SECRET.map(lambda s: f"Bearer {Secret.fill(s)}")
)
RULES = st.dictionaries(
    LABEL.map(lambda label: f"{label}.rules.example.com"),  # exact names below one apex: never overlapping
    st.lists(
        st.fixed_dictionaries(
            {
                "transform": st.fixed_dictionaries(
                    {"headers": st.dictionaries(st.sampled_from(["X-A", "Authorization"]), HEADER_VALUE, min_size=1)}
                )
            }
        ),
        min_size=1,
        max_size=2,
    ),
    max_size=3,
)


def e2b_allows(
    allow_out: list[str], deny_out: list[str], internet: bool, dns: list[str], ip: str, name: str | None
) -> bool:
    """E2B's documented rule: allowOut beats denyOut; no match is allowed; a name in allowOut opens the DNS servers."""

    def hit(entry: str) -> bool:
        if entry.startswith("*."):
            return name is not None and name.endswith(entry[1:])
        try:
            return ipaddress.ip_address(ip) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return name == entry

    def is_name(entry: str) -> bool:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return True
        return False

    has_name = any(is_name(e) for e in allow_out)
    if any(hit(e) for e in allow_out) or (has_name and ip in dns):
        return True
    return internet and not any(hit(e) for e in deny_out)


@given(
    st.lists(ENTRY, max_size=5),
    st.lists(ENTRY, max_size=5),
    st.booleans(),
    st.one_of(st.none(), st.lists(OCTETS, max_size=3)),
    RULES,
    OCTETS,
    st.one_of(st.none(), DOMAIN, LABEL.map(lambda label: f"{label}.rules.example.com")),
)
def test_every_valid_body_maps_to_a_policy_meaning_e2bs_rule(
    allow_out: list[str],
    deny_out: list[str],
    internet: bool,
    dns: list[str] | None,
    rules: dict[str, Any],
    ip: str,
    name: str | None,
) -> None:
    network: SandboxNetworkOpts = {"allow_out": allow_out, "deny_out": deny_out, "rules": rules}
    if dns is not None:
        network["dns_servers"] = dns
    policy = from_create(create_body(network), allow_internet_access=internet).policy
    if isinstance(policy, dict):
        Policy.model_validate(policy)
    else:
        assert policy in ("none", "egress")
    expected = e2b_allows(allow_out, deny_out, internet, ["8.8.8.8"] if dns is None else dns, ip, name)
    assert allowed(policy, ip, name) == expected
    # The update body means the same (a deny-all policy for "none"), and survives the trip through E2B's GET.
    updated = from_update(update_body({**network, "allow_internet_access": internet}))
    assert updated == policy or (policy == "none" and isinstance(updated, dict) and not allowed(updated, ip, name))
    shown = to_info(policy, True)["network"]
    shown_again = from_update({k: v for k, v in shown.items() if k != "allowPublicTraffic"})
    assert shown_again == policy or (policy == "none" and not allowed(shown_again, ip, name))


def test_e2bs_dashed_secret_names_are_names() -> None:
    # E2B's docs write secrets as `openai-api-key`; the vault takes such names (wire/vault.py) and so do rules.
    rules = {
        "api.openai.com": [{"transform": {"headers": {"Authorization": "Bearer " + Secret.fill("openai-api-key")}}}]
    }
    policy = from_update({"rules": rules})
    assert Policy.model_validate(policy).secret_names() == {"openai-api-key"}
