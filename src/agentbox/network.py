"""The workspaces' network: their own Docker bridge, and what each workspace may reach.

`WORKSPACE_NETWORK_NAME` names a bridge with inter-container communication disabled,
made here if it is missing. Which destinations each workspace may reach is its network
policy, enforced by the host firewall (firewall.py); "none" gives a workspace no interface
but loopback.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from typing import Annotated, Literal

import docker
import docker.errors
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agentbox.errors import AgentboxError

log = logging.getLogger("agentbox.network")

ICC_OPTION = "com.docker.network.bridge.enable_icc"
INSTANCE_LABEL = "agentbox.instance"  # the deployment that made the network
NO_NETWORK = "none"  # Docker's own name for "loopback only"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class NetworkError(AgentboxError):
    """The workspace network cannot be used; the message says what to fix."""


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


def policy_of(network: str, allow: list[str] | None) -> NetworkPolicy:
    """A stored workspace's policy, from its network and allow list."""
    if network == NO_NETWORK:
        return "none"
    return "egress" if allow is None else AllowList(allow=allow)


def mac_address(workspace_id: str) -> str:
    """The workspace's own MAC address, fixed for its life: the firewall knows it by it.

    Derived from the id (locally administered, unicast), so it is known before the container
    exists and stays the same across restarts, unlike the address Docker hands out.
    """
    digest = hashlib.sha256(workspace_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def ensure_network(client: docker.DockerClient, name: str, instance: str) -> dict[str, object]:
    """Create the bridge network `name` without inter-container traffic unless it exists; inspect it.

    An existing network is used as it is, but one that lets workspaces talk to each other
    is refused: that would silently undo the isolation the setting asks for. So is one that
    another deployment made: the firewall of one network is written by one deployment.
    """
    try:
        existing: dict[str, object] = client.api.inspect_network(name)
    except docker.errors.NotFound:
        mine = {"agentbox.network": "workspaces", INSTANCE_LABEL: instance}
        client.api.create_network(name, driver="bridge", options={ICC_OPTION: "false"}, labels=mine)
        log.info("created the workspace network %s (bridge, inter-container traffic disabled)", name)
        created: dict[str, object] = client.api.inspect_network(name)
        return created
    options = existing.get("Options") or {}
    if existing.get("Driver") != "bridge" or not isinstance(options, dict) or options.get(ICC_OPTION) != "false":
        raise NetworkError(
            f"WORKSPACE_NETWORK_NAME={name}: the existing network {name!r} allows traffic between containers "
            f"(it needs driver bridge and option {ICC_OPTION}=false): remove it (docker network rm {name}) "
            "and agentbox will create it, or choose another name"
        )
    labels = existing.get("Labels")
    owner = labels.get(INSTANCE_LABEL) if isinstance(labels, dict) else None
    if owner not in (None, instance):
        raise NetworkError(
            f"WORKSPACE_NETWORK_NAME={name}: the network belongs to another agentbox deployment (instance {owner}); "
            "each deployment needs a network of its own, since it writes that network's firewall"
        )
    return existing
