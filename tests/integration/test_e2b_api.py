"""agentbox's E2B-compatible control plane over real gVisor workspaces, through the unmodified `e2b` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2b import Sandbox, SandboxQuery

from agentbox.client import APIError

from .conftest import KEYS, Server, eventually


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing of E2B's cloud: the SDK's variables point at the server under test."""
    monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
    monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
    yield


def test_a_sandbox_made_by_the_sdk_is_a_workspace_that_ends_at_its_timeout(
    reaping: Server, sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_API_URL", f"{reaping.url}/e2b")
    sandbox = Sandbox.create(timeout=300, metadata={"sandbox_test_id": "e2e"}, envs={"GREETING": "hello"})
    with reaping.client("alice") as alice:
        workspace = alice.get(sandbox.sandbox_id)
        tag = {"sandbox_test_id": "e2e"}
        assert (workspace.status, workspace.runtime, workspace.labels) == ("running", "runsc", tag)
        listed = Sandbox.list(query=SandboxQuery(metadata=tag)).next_items()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        sandbox.set_timeout(3)
        # Its first use after that does not move the end, as a sliding TTL would.
        assert alice.exec(sandbox.sandbox_id, "echo $GREETING").stdout == "hello\n"  # envs reach its commands
        eventually(lambda: sandbox.sandbox_id not in [w.id for w in alice.list()], timeout=30)
        with pytest.raises(APIError):
            alice.get(sandbox.sandbox_id)
    assert Sandbox.kill(sandbox.sandbox_id) is False
