"""The workspaces' own Docker bridge and its firewall: how the Docker provider enforces network policies.

`WORKSPACE_NETWORK_NAME` names a bridge with inter-container communication disabled, made
here if it is missing. A workspace on it is known to the firewall by a MAC address derived
from its id; its grant (the public internet, or the CIDRs of its allow list) is written into
the firewall before its container exists and kept on the container as a label, so that a
restarted server rebuilds the firewall from the engine alone. "none" gives a workspace no
interface but loopback, and needs no network at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address

import docker
import docker.errors

from agentbox.errors import AgentboxError
from agentbox.providers.docker.egress_redirect import EgressRedirect, Endpoint
from agentbox.providers.docker.firewall import Firewall
from agentbox.providers.docker.labels import GRANT_LABEL, INSTANCE_LABEL, WORKSPACE_LABEL

log = logging.getLogger("agentbox.providers.docker.network")

ICC_OPTION = "com.docker.network.bridge.enable_icc"


class NetworkError(AgentboxError):
    """The workspace network cannot be used; the message says what to fix."""


def mac_address(workspace_id: str) -> str:
    """The workspace's own MAC address, fixed for its life: the firewall knows it by it.

    Derived from the id (locally administered, unicast), so it is known before the container
    exists and stays the same across restarts, unlike the address Docker hands out.
    """
    digest = hashlib.sha256(workspace_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def stored_grant(egress: object, allow_cidrs: Sequence[str] | None, by_name: bool) -> list[str] | None:
    """The firewall grant of a workspace whose stored policy is `egress` (the egress column: None for the public
    internet) and `allow_cidrs`; `by_name`: the egress proxy enforces policies (then a policy workspace reaches
    nothing directly). A policy the firewall cannot pin (no proxy now) gets nothing: fail closed."""
    if egress is None:
        return None
    if by_name or allow_cidrs is None:
        return []
    return list(allow_cidrs)


class WorkspaceNetwork:
    """The fenced bridge `name`: containers join it with a grant, and leave their grant behind when removed."""

    def __init__(self, name: str, firewall: Firewall) -> None:
        self.name = name
        self.firewall = firewall

    @classmethod
    def open(
        cls,
        client: docker.DockerClient,
        name: str,
        instance: str,
        stored: Mapping[str, Sequence[str] | None] | None = None,
    ) -> WorkspaceNetwork:
        """Make or check the network, and write its firewall with the grants of the workspaces already on it.

        `stored`: workspace id -> its grant as its stored policy wants it now (`stored_grant`), which wins over
        its container's label: a label is written once, at create, and a policy changed since (PATCH) would
        otherwise come back as it was until the server hands the policies back, or for good.
        Raises NetworkError or FirewallError (with what to fix), or docker.errors.APIError.
        """
        stored = stored or {}
        network = cls(name, Firewall.for_network(ensure_network(client, name, instance)))
        grants: dict[str, Sequence[str] | None] = {}
        mine = [WORKSPACE_LABEL, f"{INSTANCE_LABEL}={instance}"]
        containers = client.api.containers(all=True, filters={"label": mine})
        for container in containers:
            labels = container["Labels"]
            if labels[WORKSPACE_LABEL] in stored:
                grants[mac_address(labels[WORKSPACE_LABEL])] = stored[labels[WORKSPACE_LABEL]]
            elif GRANT_LABEL in labels:
                grants[mac_address(labels[WORKSPACE_LABEL])] = json.loads(labels[GRANT_LABEL])
            elif name in (container.get("NetworkSettings") or {}).get("Networks", {}):
                # Made before grants were labelled: it keeps DNS only until it is re-created (never more).
                log.warning("workspace %s has no recorded network grant: re-create it", labels[WORKSPACE_LABEL])
        network.firewall.adopt(grants)
        return network

    def join(self, workspace_id: str, allow_cidrs: Sequence[str] | None) -> dict[str, str]:
        """Open the firewall for a workspace about to be made; the labels its container carries.

        Raises FirewallError (503) when iptables fails: the workspace is then not made.
        """
        self.firewall.grant(mac_address(workspace_id), allow_cidrs)
        return {GRANT_LABEL: json.dumps(None if allow_cidrs is None else list(allow_cidrs))}

    def leave(self, workspace_id: str) -> None:
        self.firewall.revoke(mac_address(workspace_id))

    def resolve(self, entries: Sequence[str]) -> list[str]:
        """The CIDRs an allow list stands for; a 400 for what can never be reached or resolved."""
        return self.firewall.resolve(entries)

    def restore(self) -> None:
        """Check the firewall and write back only what is missing (it may have been flushed); raises FirewallError."""
        self.firewall.restore()


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
            "each deployment needs a network of its own, since it writes that network's firewall: choose another "
            "name (WORKSPACE_NETWORK_NAME; with make run, NETWORK=...)"
        )
    return existing


def remove_network(client: docker.DockerClient, name: str) -> None:
    """Remove the workspace network `name` and every chain agentbox wrote for it (the egress redirect's, then the
    firewall's), which a server leaves in place for its workspaces; nothing when there is no such network.

    Raises docker.errors.APIError (a container still on it, say) and FirewallError.
    """
    try:
        firewall = Firewall.for_network(client.api.inspect_network(name))
    except docker.errors.NotFound:
        return
    unused = Endpoint(IPv4Address("192.0.2.1"), 1)  # the chains' names come from the network: no endpoint is needed
    EgressRedirect.for_firewall(firewall, unused, unused).uninstall()
    firewall.remove()
    client.api.remove_network(name)
