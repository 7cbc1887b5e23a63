"""Runtime choice: gVisor when it works, runc with the spec's warning when it does not."""

from __future__ import annotations

import os
from pathlib import Path

from agentbox.client import Client

from .conftest import Server
from .engines import second_engine


def fallback_server(tmp_path: Path, docker_host: str) -> Server:
    return Server(tmp_path, env={"DOCKER_HOST": docker_host, "WORKSPACE_IMAGE": "agentbox-test/busybox:1"}).start()


def test_runsc_unregistered_gives_runc_workspaces_and_a_warning(tmp_path: Path) -> None:
    with second_engine({}) as engine:
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert health["runtime"] == "runc" and health["gvisor"] is False
            assert str(health["runtime_reason"]).startswith("gVisor runtime (runsc) not found")
            warnings = [line for line in server.log().splitlines() if " WARNING " in line]
            assert len([w for w in warnings if "gVisor runtime (runsc) not found" in w]) == 1, warnings
            with server.client() as alice:
                created = alice.create()
                try:
                    assert created["runtime"] == "runc" and created["provider"] == "gvisor"
                    # Under runc the workload sees the host's kernel, not gVisor's.
                    assert alice.exec(created["id"], "uname -r")["stdout"].strip() == os.uname().release
                finally:
                    alice.delete(created["id"])
        finally:
            server.stop()


def test_registered_but_broken_runsc_is_probed_and_refused(tmp_path: Path) -> None:
    broken = {"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=systrap"]}}}
    with second_engine(broken) as engine:
        server = fallback_server(tmp_path, engine.host)
        try:
            health = server.health()
            assert health["runtime"] == "runc" and health["gvisor"] is False
            assert "probe failed" in str(health["runtime_reason"])
            assert "gVisor runtime (runsc) is registered but its probe failed" in server.log()
        finally:
            server.stop()


def test_explicit_docker_provider_uses_runc(alice: Client) -> None:
    created = alice.create(provider="docker")
    try:
        assert created["provider"] == "docker" and created["runtime"] == "runc"
        assert alice.exec(created["id"], "uname -r")["stdout"].strip() == os.uname().release
    finally:
        alice.delete(created["id"])
