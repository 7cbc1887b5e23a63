"""Admission under a burst: the WORKSPACE_MAX_CONCURRENT cap is exact and leaves nothing half-made."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx

from agentbox.db.store import Store

from .conftest import KEYS, WORKSPACE_LABEL, Server


def test_fifty_concurrent_creates_against_a_cap_of_ten(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    before = len(docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL}))
    server = Server(tmp_path, env={"WORKSPACE_MAX_CONCURRENT": "10", "WORKSPACE_DEFAULT_MEMORY": "256M"}).start()
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    try:
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=300) as http:

            def create(_: int) -> httpx.Response:
                return http.post("/workspaces", json={"labels": {"burst": "1"}})

            with ThreadPoolExecutor(max_workers=50) as pool:
                responses = list(pool.map(create, range(50)))
            codes = sorted(r.status_code for r in responses)
            assert codes.count(201) == 10 and codes.count(429) == 40, codes
            refused = next(r for r in responses if r.status_code == 429)
            assert "WORKSPACE_MAX_CONCURRENT" in refused.json()["detail"]
            admitted = [r.json()["id"] for r in responses if r.status_code == 201]
            running = docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})
            assert len(running) - before == 10
            assert {w["id"] for w in http.get("/workspaces").json()["workspaces"]} == set(admitted)
            # The cap counts what exists, not what this process remembers: after a crash and a
            # restart one more is still refused, until one goes away.
            server.stop(kill=True)
            server.start()
            assert http.post("/workspaces", json={}).status_code == 429
            assert http.delete(f"/workspaces/{admitted[0]}").status_code == 204
            extra = http.post("/workspaces", json={})
            assert extra.status_code == 201
            for workspace_id in [*admitted[1:], extra.json()["id"]]:
                assert http.delete(f"/workspaces/{workspace_id}").status_code == 204
    finally:
        server.stop()
    assert len(docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})) == before


def test_the_cap_holds_across_two_servers_on_one_postgresql(
    tmp_path: Path, postgres_url: str, docker_client: docker.DockerClient
) -> None:
    # Two server processes of one deployment on one host (one database, one data directory with
    # the workspaces' disks): admission is counted under a lock in the database, not in a process.
    env = {"WORKSPACE_DATABASE_URL": postgres_url, "WORKSPACE_MAX_CONCURRENT": "4", "WORKSPACE_DEFAULT_MEMORY": "256M"}
    servers = [Server(tmp_path, env=env).start() for _ in range(2)]
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    try:
        clients = [httpx.Client(base_url=f"{s.url}/api/v1", headers=headers, timeout=300) for s in servers]

        def create(i: int) -> httpx.Response:
            return clients[i % 2].post("/workspaces", json={"provider": "docker"})

        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(create, range(16)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 4 and codes.count(429) == 12, codes
        admitted = {r.json()["id"] for r in responses if r.status_code == 201}
        # Both servers see the same four.
        for client in clients:
            assert {w["id"] for w in client.get("/workspaces").json()["workspaces"]} == admitted
        for i, workspace_id in enumerate(admitted):
            assert clients[i % 2].delete(f"/workspaces/{workspace_id}").status_code == 204
        for client in clients:
            client.close()
    finally:
        for server in servers:
            server.stop()
    assert not docker_client.containers.list(all=True, filters={"label": f"agentbox.instance={servers[0].instance}"})


def test_admission_is_serialised_in_the_database(postgres_url: str) -> None:
    # Two stores on two engines stand for two server processes: while one holds the admission
    # lock, the other waits for it, which a lock inside either process could never make it do.
    first, second = (Store(postgres_url.replace("postgresql://", "postgresql+psycopg://")) for _ in range(2))
    first.migrate()
    inside, released, entered = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with first.admission():
            inside.set()
            time.sleep(0.5)
            released.set()

    def wait_for_it() -> None:
        with second.admission():
            entered.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert not entered.wait(0.3), "the second process was admitted while the first held the lock"
    holder.join()
    waiter.join(10)
    assert released.is_set() and entered.is_set()
    first.close()
    second.close()
