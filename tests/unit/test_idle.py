"""Idle suspend over a fake provider that refuses calls into a suspended sandbox (tests/fake_provider.py):
what is suspended, what stays awake, and that every way back wakes it once."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from agentbox.config import load_settings
from agentbox.db.models import utcnow
from agentbox.db.store import Store
from agentbox.providers.base import Capabilities, Usage
from agentbox.sandbox.async_tunnel import as_async
from agentbox.sandbox.runtime import DirEntry, ExecRequest, ExecResult, close_stream
from agentbox.wire.domain import Command, NewWorkspace
from agentbox.workspaces import activity
from agentbox.workspaces.activity import Activity, HeldConnection, HeldRuntime
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.pool import WarmPool
from tests.fake_provider import FakeProvider, FakeRuntime

SUSPENDS = Capabilities(runtime="fake", isolation="none (a unit-test fake)", suspend=True)
ECHO = Command(argv=["echo", "awake"])


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider("gvisor", capabilities=SUSPENDS)


@pytest.fixture
def manager(tmp_path: Path, provider: FakeProvider) -> Iterator[WorkspaceManager]:
    settings = load_settings(ENABLE_AGENT_WORKSPACES="true", WORKSPACE_DATA_DIR=str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    yield WorkspaceManager(settings, store, {"gvisor": provider})
    store.engine.dispose()


def idle_for(manager: WorkspaceManager, workspace_id: str, seconds: float) -> None:
    """As if nothing had happened in the workspace for `seconds`."""
    manager.store.update(workspace_id, active_at=utcnow() - timedelta(seconds=seconds))


def test_an_idle_workspace_is_suspended_and_any_use_wakes_it_once(
    manager: WorkspaceManager, provider: FakeProvider
) -> None:
    fresh = manager.create("alice", NewWorkspace(idle_timeout=60))
    idle = manager.create("alice", NewWorkspace(idle_timeout=60))
    idle_for(manager, idle.id, 61)
    assert manager.idle.run() == 1  # the fake cannot measure CPU: idle is enough
    assert manager.get("alice", idle.id).suspended_at is not None
    assert manager.get("alice", fresh.id).suspended_at is None

    assert manager.use("alice", idle.id).exec(ECHO).stdout == "awake\n"  # the fake refuses calls while suspended
    assert manager.get("alice", idle.id).suspended_at is None
    assert [kind for kind in (e.kind for e in manager.store.events(idle.id)) if kind in ("suspended", "woken")] == [
        "suspended",
        "woken",
    ]


def test_the_use_that_wakes_a_workspace_slides_its_expiry(manager: WorkspaceManager) -> None:
    """An ephemeral workspace asleep most of its TTL, then used, lives a whole TTL from its wake."""
    workspace = manager.create("alice", NewWorkspace(idle_timeout=60, ttl_days=1))
    long_ago = utcnow() - timedelta(hours=20)
    manager.store.update(
        workspace.id, last_used_at=long_ago, active_at=long_ago, expires_at=long_ago + timedelta(days=1)
    )
    assert manager.idle.run() == 1

    manager.use("alice", workspace.id).exec(ECHO)
    woken = manager.get("alice", workspace.id)
    assert woken.suspended_at is None
    assert woken.expires_at is not None and woken.expires_at > utcnow() + timedelta(hours=23)
    assert woken.last_used_at is not None and woken.last_used_at > utcnow() - timedelta(minutes=1)


def test_a_workspace_busy_on_its_own_is_not_suspended(manager: WorkspaceManager, provider: FakeProvider) -> None:
    busy = manager.create("alice", NewWorkspace(idle_timeout=60))
    sandbox = next(iter(provider.sandboxes.values()))
    sandbox.usage = Usage(cpu_seconds=10.0, memory_bytes=1 << 20)
    idle_for(manager, busy.id, 120)
    assert manager.idle.run() == 0  # the first look: nothing to compare with yet
    time.sleep(0.2)
    sandbox.usage = Usage(cpu_seconds=10.2, memory_bytes=1 << 20)  # a core's worth over 0.2 s
    assert manager.idle.run() == 0
    time.sleep(0.2)
    assert manager.idle.run() == 1  # no CPU since: idle


def test_idle_timeout_zero_and_providers_that_cannot_suspend(tmp_path: Path, manager: WorkspaceManager) -> None:
    never = manager.create("alice", NewWorkspace(idle_timeout=0))
    idle_for(manager, never.id, 86400)
    assert manager.idle.run() == 0

    plain = FakeProvider("docker")
    manager.providers["docker"] = plain
    default = manager.create("alice", NewWorkspace(provider="docker"))
    assert default.idle_timeout == 0  # the server's default does not apply where it cannot be done
    with pytest.raises(Exception, match="cannot be suspended"):
        manager.create("alice", NewWorkspace(provider="docker", idle_timeout=60))


def test_a_use_during_the_freeze_is_not_left_frozen(manager: WorkspaceManager, provider: FakeProvider) -> None:
    workspace = manager.create("alice", NewWorkspace(idle_timeout=60))
    idle_for(manager, workspace.id, 61)
    freeze = provider.suspend

    def used_meanwhile(ref: str) -> None:  # a caller wakes it between the mark and the freeze
        manager.use("alice", workspace.id)
        freeze(ref)

    provider.suspend = used_meanwhile  # type: ignore[method-assign]
    assert manager.idle.run() == 0
    assert manager.get("alice", workspace.id).suspended_at is None
    assert manager.use("alice", workspace.id).exec(ECHO).stdout == "awake\n"


def test_concurrent_uses_wake_it_once(manager: WorkspaceManager) -> None:
    workspace = manager.create("alice", NewWorkspace(idle_timeout=60))
    idle_for(manager, workspace.id, 61)
    assert manager.idle.run() == 1
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(manager.use("alice", workspace.id).exec(ECHO).stdout))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == ["awake\n"] * 8
    assert [e.kind for e in manager.store.events(workspace.id)].count("woken") == 1


def test_a_call_in_flight_keeps_its_workspace_active(
    manager: WorkspaceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activity, "TOUCH_SECONDS", 0.05)
    workspace = manager.create("alice", NewWorkspace(idle_timeout=60))
    stream = manager.use("alice", workspace.id).exec_stream(ECHO)  # open, not read: held
    idle_for(manager, workspace.id, 61)
    time.sleep(0.3)
    assert manager.idle.run() == 0  # touched while held
    close_stream(stream)
    time.sleep(0.2)
    assert manager.activity.held() == []
    idle_for(manager, workspace.id, 61)
    assert manager.idle.run() == 1


def test_a_stream_dropped_unread_lets_its_workspace_go(manager: WorkspaceManager) -> None:
    workspace = manager.create("alice", NewWorkspace(idle_timeout=60))
    handle = manager.use("alice", workspace.id)
    handle.exec_stream(ECHO)  # dropped at once, never read
    assert manager.activity.held() == []


def test_the_pool_waits_suspended_and_a_claim_wakes_it(tmp_path: Path, provider: FakeProvider) -> None:
    settings = load_settings(
        ENABLE_AGENT_WORKSPACES="true", WORKSPACE_DATA_DIR=str(tmp_path), WORKSPACE_WARM_POOL_SIZE="1"
    )
    store = Store(f"sqlite:///{tmp_path / 'pool.sqlite'}")
    store.migrate()
    try:
        pool = WarmPool(settings, store, provider, Metrics())
        pool.fill()
        assert [s.suspended for s in provider.sandboxes.values()] == [True]
        manager = WorkspaceManager(settings, store, {"gvisor": provider}, pool=pool)
        claimed = manager.create("alice", NewWorkspace())
        assert claimed.suspended_at is None
        assert manager.use("alice", claimed.id).exec(ECHO).stdout == "awake\n"
    finally:
        store.engine.dispose()


class Quiet:
    """A port connection with nothing to say."""

    def read(self) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        pass

    def end_input(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_connection_taken_over_by_the_event_loop_holds_until_it_is_closed() -> None:
    held = Activity(lambda ids, at: None)
    connection = HeldConnection(Quiet(), held.acquire("ws-1"))
    port = as_async(connection)  # what previews and relayed WebSockets do
    del connection
    gc.collect()
    assert held.held() == ["ws-1"]  # the hold went with the port
    anyio.run(port.aclose)
    assert held.held() == []


def test_the_held_runtime_keeps_the_inner_runtimes_own_read_and_exec() -> None:
    """A runtime may do in one call what the base class does in two (the helper's read: one round trip)."""
    calls: list[str] = []

    class OneCall(FakeRuntime):
        def __init__(self) -> None:
            pass

        def read(self, path: str) -> list[DirEntry]:
            calls.append("read")
            return []

        def exec(self, request: ExecRequest) -> ExecResult:
            calls.append("exec")
            return ExecResult(exit_code=0, stdout="", stderr="", duration_ms=0, timed_out=False)

    held = Activity(lambda ids, at: None)
    runtime = HeldRuntime(OneCall(), lambda: held.acquire("ws-1"))
    runtime.read("/workspace")
    runtime.exec(ExecRequest(argv=["true"]))
    assert calls == ["read", "exec"] and held.held() == []
