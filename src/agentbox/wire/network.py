"""Network policies: what a workspace may reach ("egress", "none" or an allow list).

A policy travels in the workspace's spec; each provider enforces it or refuses it (its
`Capabilities.network_policies`). The Docker provider's enforcement is in
providers/docker/network.py and firewall.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


class AllowList(BaseModel):
    """Only these destinations (IPv4 CIDRs, or hostnames resolved when the workspace is made)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[Destination] = Field(min_length=1, max_length=64)


# "egress": the public internet; "none": loopback only; an allow list: only those destinations.
NetworkPolicy = Literal["none", "egress"] | AllowList
#: A policy's kind, as providers list the ones they enforce.
PolicyKind = Literal["egress", "none", "allow"]
POLICY_KINDS: frozenset[str] = frozenset(get_args(PolicyKind))


def kind_of(policy: NetworkPolicy) -> PolicyKind:
    return "allow" if isinstance(policy, AllowList) else policy


def columns_of(policy: NetworkPolicy, network_name: str) -> dict[str, object]:
    """The `network` and `allow` columns of a workspace with `policy` (`network_name`: WORKSPACE_NETWORK_NAME)."""
    if policy == "none":
        return {"network": NO_NETWORK, "allow": None}
    return {"network": network_name, "allow": list(policy.allow) if isinstance(policy, AllowList) else None}


def policy_of(network: str, allow: list[str] | None) -> NetworkPolicy:
    """A stored workspace's policy, from its network and allow list."""
    if network == NO_NETWORK:
        return "none"
    return "egress" if allow is None else AllowList(allow=allow)
