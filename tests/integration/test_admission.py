"""Admission under a burst: the WORKSPACE_MAX_CONCURRENT cap is exact and leaves nothing half-made."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx

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
