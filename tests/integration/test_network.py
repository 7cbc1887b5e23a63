"""WORKSPACE_NETWORK_NAME: the workspaces' own bridge network, without inter-container traffic."""

from __future__ import annotations

import contextlib
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from .conftest import Server, eventually

NETWORK = "agentbox-test-net"


def remove_network(client: docker.DockerClient) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_network(NETWORK)


def test_workspaces_on_their_network_cannot_reach_each_other(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    remove_network(docker_client)
    server = Server(tmp_path, env={"WORKSPACE_NETWORK_NAME": NETWORK}).start()
    try:
        network = docker_client.api.inspect_network(NETWORK)  # made by the server
        assert network["Driver"] == "bridge"
        assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        with server.client() as alice:
            first, second = alice.create(), alice.create()
            addresses = []
            for workspace in (first, second):
                settings = docker_client.api.inspect_container(f"agentbox-{workspace['id']}")["NetworkSettings"]
                assert set(settings["Networks"]) == {NETWORK}  # that network and no other
                addresses.append(settings["Networks"][NETWORK]["IPAddress"])
            alice.exec(str(second["id"]), "python3 -m http.server 8080 >/dev/null 2>&1 &")
            # The host reaches it (so it is listening)...
            eventually(lambda: _answers(f"http://{addresses[1]}:8080/"), timeout=30)
            # ...another workspace does not.
            probe = f"import socket; socket.create_connection(('{addresses[1]}', 8080), timeout=3); print('reached')"
            result = alice.exec(str(first["id"]), ["python3", "-c", probe], timeout=20)
            assert result["exit_code"] != 0 and "reached" not in result["stdout"], result
            for workspace in (first, second):
                alice.delete(str(workspace["id"]))
    finally:
        server.stop()
        remove_network(docker_client)


def test_an_existing_network_that_lets_containers_talk_is_refused(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    remove_network(docker_client)
    docker_client.api.create_network(NETWORK, driver="bridge")
    try:
        with pytest.raises(RuntimeError) as error:
            Server(tmp_path, env={"WORKSPACE_NETWORK_NAME": NETWORK}).start()
        assert "allows traffic between containers" in str(error.value)
        assert "Traceback" not in str(error.value)
    finally:
        remove_network(docker_client)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
