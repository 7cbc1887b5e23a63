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
            alice.write_file(kept.id, "/workspace/notes.txt", b"before the crash")
            alice.stop(stopped.id)
        container_ids = {c.id for c in docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})}
        server.stop(kill=True)  # SIGKILL: no shutdown code runs

        server.start()
        with server.client() as alice:
            after = {w.id: w for w in alice.list()}
            assert after[kept.id].status == "running" and after[kept.id].labels == {"case": "restart"}
            assert after[stopped.id].status == "stopped"
            assert alice.read_file(kept.id, "/workspace/notes.txt") == b"before the crash"
            assert alice.exec(kept.id, "echo alive").stdout == "alive\n"
            assert alice.start(stopped.id).status == "running"
            now = {c.id for c in docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})}
            assert container_ids <= now
            alice.delete(kept.id)
            alice.delete(stopped.id)
    finally:
        server.stop()


def test_disabled_server_answers_404_and_starts_nothing(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    before = {c.id for c in docker_client.containers.list(all=True)}
    server = Server(tmp_path, env={"ENABLE_AGENT_WORKSPACES": "false"}).start()
    try:
        health = server.health()
        assert health.workspaces_enabled is False and health.status == "ok"
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


def test_postgresql_database_keeps_workspaces_across_restarts(tmp_path: Path, postgres_url: str) -> None:
    server = Server(tmp_path, env={"WORKSPACE_DATABASE_URL": postgres_url}).start()
    try:
        with server.client() as alice:
            created = alice.create(memory="5G", labels={"db": "postgres"})  # 5G: past a 32-bit column
        server.stop(kill=True)
        server.start()
        with server.client() as alice:
            again = alice.get(created.id)
            assert again.memory == "5G" and again.labels == {"db": "postgres"}
            assert alice.exec(created.id, "echo pg").stdout == "pg\n"
            alice.delete(created.id)
    finally:
        server.stop()
    assert not (tmp_path / "agentbox.db").exists(), "the SQLite default was used instead of PostgreSQL"
