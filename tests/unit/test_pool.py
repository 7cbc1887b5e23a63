"""The warm pool and reconciliation over an in-memory fake provider: no Docker, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentbox.config import load_settings
from agentbox.db.models import Status, Workspace, new_workspace_id
from agentbox.db.store import Store
from agentbox.errors import TooManyWorkspaces
from agentbox.providers.base import WorkspaceSpec
from agentbox.wire.domain import NewWorkspace
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.pool import WarmPool
from agentbox.workspaces.reconcile import Reconciler
from tests.fake_provider import FakeProvider
from tests.unit.test_store import make_workspace


def pooled_setup(tmp_path: Path, store: Store, size: int, cap: int) -> tuple[WorkspaceManager, WarmPool, FakeProvider]:
    settings = load_settings(
        ENABLE_AGENT_WORKSPACES="true",
        WORKSPACE_DATA_DIR=str(tmp_path),
        WORKSPACE_WARM_POOL_SIZE=str(size),
        WORKSPACE_MAX_CONCURRENT=str(cap),
    )
    provider = FakeProvider("gvisor")
    metrics = Metrics()
    pool = WarmPool(settings, store, provider, metrics)
    return WorkspaceManager(settings, store, {"gvisor": provider}, metrics=metrics, pool=pool), pool, provider


def test_creates_are_served_from_the_pool_and_it_refills(tmp_path: Path, store: Store) -> None:
    manager, pool, provider = pooled_setup(tmp_path, store, size=2, cap=10)
    pool.fill()
    assert pool.ready() == 2 and len(provider.sandboxes) == 2

    workspace = manager.create("alice", NewWorkspace(labels={"task": "x"}, env={"A": "1"}))
    assert workspace.owner == "alice" and workspace.status == Status.RUNNING and workspace.labels == {"task": "x"}
    assert len(provider.sandboxes) == 2  # claimed, not made
    assert pool.ready() == 1
    assert [e.kind for e in store.events(workspace.id)][-1] == "claimed"

    pool.fill()
    assert pool.ready() == 2 and len(provider.sandboxes) == 3

    other = manager.create("alice", NewWorkspace(memory=512 << 20))  # not what the pool holds: cold
    assert len(provider.sandboxes) == 4 and pool.ready() == 2 and other.memory == 512 << 20


def test_the_pool_shrinks_to_leave_room_under_the_cap(tmp_path: Path, store: Store) -> None:
    manager, pool, provider = pooled_setup(tmp_path, store, size=3, cap=3)
    pool.fill()
    assert pool.ready() == 3
    for _ in range(2):
        manager.create("alice", NewWorkspace(memory=512 << 20))  # cold: two active now
    pool.fill()
    assert pool.ready() == 1  # pooled workspaces never count against the cap, so only one fits
    manager.create("alice", NewWorkspace())  # the last slot, from the pool
    with pytest.raises(TooManyWorkspaces):
        manager.create("alice", NewWorkspace())
    pool.fill()
    assert pool.ready() == 0 and len(provider.sandboxes) == 3


def test_drain_removes_every_idle_sandbox(tmp_path: Path, store: Store) -> None:
    _, pool, provider = pooled_setup(tmp_path, store, size=3, cap=10)
    pool.fill()
    pool.drain()
    assert provider.sandboxes == {} and pool.ready() == 0


def _record(store: Store, status: Status, provider_ref: str | None) -> Workspace:
    workspace = make_workspace(new_workspace_id(), status=status)
    workspace.provider_ref = provider_ref
    return store.add(workspace, "created")


def test_reconciliation_removes_orphans_and_reports_what_vanished(store: Store) -> None:
    provider = FakeProvider("gvisor")
    orphan = provider.create(WorkspaceSpec(id="ws-orphan", image="img", cpu=1, memory=1, disk=1, pids_limit=1))
    kept_ref = provider.create(WorkspaceSpec(id="placeholder", image="img", cpu=1, memory=1, disk=1, pids_limit=1))
    kept = _record(store, Status.RUNNING, kept_ref)
    provider.sandboxes[kept_ref].id = kept.id
    vanished = _record(store, Status.RUNNING, "fake-gone")
    stopped_outside_ref = provider.create(WorkspaceSpec(id="x", image="img", cpu=1, memory=1, disk=1, pids_limit=1))
    stopped_outside = _record(store, Status.RUNNING, stopped_outside_ref)
    provider.sandboxes[stopped_outside_ref].id = stopped_outside.id
    provider.sandboxes[stopped_outside_ref].state = "stopped"
    abandoned = _record(store, Status.STARTING, None)

    Reconciler(store, {"gvisor": provider}, None, Metrics()).run(startup=True)

    assert orphan not in provider.sandboxes and kept_ref in provider.sandboxes
    assert store.get(kept.id).status == Status.RUNNING  # type: ignore[union-attr]
    failed = store.get(vanished.id)
    assert failed is not None and failed.status == Status.FAILED and "disappeared" in (failed.error or "")
    assert store.get(stopped_outside.id).status == Status.STOPPED  # type: ignore[union-attr]
    gone = store.get(abandoned.id)
    assert gone is not None and gone.status == Status.DELETED and "server stopped" in (gone.error or "")


def test_a_sandbox_missing_in_one_round_only_is_a_delete_in_flight(store: Store) -> None:
    """A delete removes the sandbox, then the row: a round in between must not call the workspace failed."""
    reconciler = Reconciler(store, {"gvisor": FakeProvider("gvisor")}, None, Metrics())
    deleting = _record(store, Status.RUNNING, "fake-removed")
    vanished = _record(store, Status.RUNNING, "fake-gone")

    reconciler.run()
    assert store.get(deleting.id).status == Status.RUNNING  # type: ignore[union-attr]
    assert store.get(vanished.id).status == Status.RUNNING  # type: ignore[union-attr]
    store.retire(deleting.id, "deleted")  # the delete's second half

    reconciler.run()
    assert store.get(deleting.id).status == Status.DELETED  # type: ignore[union-attr]
    failed = store.get(vanished.id)
    assert failed is not None and failed.status == Status.FAILED and "disappeared" in (failed.error or "")
