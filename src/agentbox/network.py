"""The workspaces' own Docker network (`WORKSPACE_NETWORK_NAME`), made if it is missing.

A bridge with inter-container communication disabled: workspaces on it reach the outside
through NAT but never each other. (Blocking the host, private ranges and the metadata
address is a firewall matter; see docs/security.md once it exists.)
"""

from __future__ import annotations

import logging

import docker
import docker.errors

from agentbox.errors import AgentboxError

log = logging.getLogger("agentbox.network")

ICC_OPTION = "com.docker.network.bridge.enable_icc"


class NetworkError(AgentboxError):
    """The workspace network cannot be used; the message says what to fix."""


def ensure_network(client: docker.DockerClient, name: str) -> None:
    """Create the bridge network `name` without inter-container traffic unless it exists.

    An existing network is used as it is, but one that lets workspaces talk to each other
    is refused: that would silently undo the isolation the setting asks for.
    """
    try:
        existing = client.api.inspect_network(name)
    except docker.errors.NotFound:
        client.api.create_network(
            name, driver="bridge", options={ICC_OPTION: "false"}, labels={"agentbox.network": "workspaces"}
        )
        log.info("created the workspace network %s (bridge, inter-container traffic disabled)", name)
        return
    if existing.get("Driver") != "bridge" or existing.get("Options", {}).get(ICC_OPTION) != "false":
        raise NetworkError(
            f"WORKSPACE_NETWORK_NAME={name}: the existing network {name!r} allows traffic between containers "
            f"(it needs driver bridge and option {ICC_OPTION}=false): remove it (docker network rm {name}) "
            "and agentbox will create it, or choose another name"
        )
