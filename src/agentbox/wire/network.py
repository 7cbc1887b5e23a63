"""Network policies: what a workspace may reach ("egress", "none" or an egress policy).

A policy travels in the workspace's spec; each provider enforces it or refuses it (its
`Capabilities.network_policies`). An egress policy is `agentbox.egress.rules.Policy` (allow and
deny by exact name, `*.` wildcard, CIDR and port; a default; header rules naming secrets). The old
allow list, `{"allow": [...]}`, is that policy with only `allow`: an allow list becomes rules.

The Docker provider enforces a policy by name through the egress proxy (providers/docker/
egress_gateway.py); without the proxy it can still enforce a plain allow list ("allow": names
resolved once at create, pinned by the firewall: network.py, firewall.py).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field

from agentbox.egress.rules import Policy

NO_NETWORK = "none"  # Docker's own name for "loopback only"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _destination(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        if not _HOSTNAME.match(value) or value.replace(".", "").isdigit():
            raise ValueError(f"{value!r} is neither an IPv4 address or CIDR (1.2.3.0/24) nor a hostname") from None
        return value.lower()
    if network.version != 4:
        raise ValueError(f"{value!r}: workspaces have IPv4 only; give an IPv4 address or CIDR")
    return str(network)


Destination = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_destination)]

#: The old name of a policy that lists what it allows: every allow list is a Policy.
AllowList = Policy

# "egress": the public internet; "none": loopback only; a policy: what it allows (see egress/rules.py).
NetworkPolicy = Literal["none", "egress"] | Policy
#: A policy's kind, as providers list the ones they enforce: "allow" is a plain allow list (names and
#: addresses on every port, nothing else), which a firewall can pin by address; "rules" is any other policy,
#: which needs the egress proxy.
PolicyKind = Literal["egress", "none", "allow", "rules"]
POLICY_KINDS: frozenset[str] = frozenset(get_args(PolicyKind))


def kind_of(policy: NetworkPolicy) -> PolicyKind:
    if not isinstance(policy, Policy):
        return policy
    plain = (
        not policy.deny
        and not policy.headers
        and not policy.github
        and policy.default == "deny"
        and policy.allow
        and all(entry.ports is None and entry.kind != "wildcard" for entry in policy.allow)
    )
    return "allow" if plain else "rules"


def columns_of(policy: NetworkPolicy, network_name: str) -> dict[str, object]:
    """The `network`, `allow` and `egress` columns of a workspace with `policy` (`network_name`:
    WORKSPACE_NETWORK_NAME). `allow` is the plain allow list a provider without the proxy pins by address."""
    if policy == "none":
        return {"network": NO_NETWORK, "allow": None, "egress": None}
    if not isinstance(policy, Policy):
        return {"network": network_name, "allow": None, "egress": None}
    allow = [entry.describe() for entry in policy.allow] if kind_of(policy) == "allow" else None
    return {"network": network_name, "allow": allow, "egress": policy_json(policy)}


def policy_json(policy: Policy) -> dict[str, Any]:
    """A policy as it is stored (and shown): what was asked, with the defaults left out."""
    return policy.model_dump(mode="json", exclude_defaults=True)


def policy_of(network: str, egress: dict[str, Any] | None, allow: list[str] | None = None) -> NetworkPolicy:
    """A stored workspace's policy, from its network and egress columns (`allow`: rows of before 0013)."""
    if network == NO_NETWORK:
        return "none"
    if egress is not None:
        return Policy.model_validate(egress)
    return "egress" if allow is None else Policy(allow=allow)  # type: ignore[arg-type]
