"""A server with no Docker provider at all (WORKSPACE_PROVIDERS=e2b) starts without an engine and says what it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentbox.client import APIError

from .conftest import Server
from .e2b_standin import E2BStandIn


def test_a_server_with_only_e2b_needs_no_docker_engine(tmp_path: Path) -> None:
    standin = E2BStandIn(tmp_path / "e2b").start()
    env = {
        "WORKSPACE_PROVIDERS": "e2b",
        "WORKSPACE_DEFAULT_PROVIDER": "e2b",
        "E2B_API_KEY": standin.api_key,
        "E2B_API_URL": standin.url,
        "E2B_SANDBOX_URL": standin.url,
        "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}",  # any Docker call would fail
        "WORKSPACE_NETWORK_NAME": "",
    }
    server = Server(tmp_path / "server", env=env).start()
    try:
        health = server.health()
        assert health.providers == ["e2b"] and health.runtime is None
        assert "WORKSPACE_PROVIDERS" in health.runtime_reason
        with server.client() as alice:
            workspace = alice.create()
            assert workspace.provider == "e2b"
            assert alice.exec(workspace.id, "echo from e2b").stdout == "from e2b\n"
            with pytest.raises(APIError) as refused:
                alice.create(provider="gvisor")
            assert refused.value.status_code == 400 and "WORKSPACE_PROVIDERS=e2b" in str(refused.value.detail)
            alice.delete(workspace.id)
        assert standin.sandboxes == {}
    finally:
        server.stop()
        standin.stop()
