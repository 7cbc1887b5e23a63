"""The server as a process: restarts lose nothing; disabled means no engine work at all."""

from __future__ import annotations

from pathlib import Path

import docker
import httpx

from .conftest import KEYS, WORKSPACE_LABEL, Server


def test_kill_and_restart_keeps_records_and_containers(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    server = Server(tmp_path).start()
    try:
        with server.client() as alice:
            kept = alice.create(labels={"case": "restart"})
            stopped = alice.create()
            alice.write_file(kept["id"], "/workspace/notes.txt", b"before the crash")
            alice.stop(stopped["id"])
        container_ids = {c.id for c in docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})}
        server.stop(kill=True)  # SIGKILL: no shutdown code runs

        server.start()
        with server.client() as alice:
            after = {w["id"]: w for w in alice.list()}
            assert after[kept["id"]]["status"] == "running" and after[kept["id"]]["labels"] == {"case": "restart"}
            assert after[stopped["id"]]["status"] == "stopped"
            assert alice.read_file(kept["id"], "/workspace/notes.txt") == b"before the crash"
            assert alice.exec(kept["id"], "echo alive")["stdout"] == "alive\n"
            assert alice.start(stopped["id"])["status"] == "running"
            now = {c.id for c in docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})}
            assert container_ids <= now
            alice.delete(kept["id"])
            alice.delete(stopped["id"])
    finally:
        server.stop()


def test_disabled_server_answers_404_and_starts_nothing(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    before = {c.id for c in docker_client.containers.list(all=True)}
    server = Server(tmp_path, env={"ENABLE_AGENT_WORKSPACES": "false"}).start()
    try:
        health = server.health()
        assert health["workspaces_enabled"] is False and health["status"] == "ok"
        headers = {"Authorization": f"Bearer {KEYS['alice']}"}
        for method, path in [
            ("POST", "/workspaces"),
            ("GET", "/workspaces"),
            ("GET", "/workspaces/ws-1"),
            ("POST", "/workspaces/ws-1/exec"),
        ]:
            response = httpx.request(method, f"{server.url}/api/v1{path}", headers=headers, json={"command": "true"})
            assert response.status_code == 404, (method, path, response.text)
            assert "ENABLE_AGENT_WORKSPACES" in response.json()["detail"]
        assert {c.id for c in docker_client.containers.list(all=True)} == before
    finally:
        server.stop()
