"""Several replicas on one database, over SQLite and the fake provider: the lease, heartbeats, what
reconciliation gives up, and that only the leader does the background work.

The replicas here share one SQLite file in one process (`alone=False`: in production SQLite serves one
process). A `Clocks` stands for the database's clock and the processes' monotonic clocks, so that the
lease's expiry is stepped through rather than waited for.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from agentbox.config import Settings, load_settings
from agentbox.db.models import Lease, Status, new_workspace_id
from agentbox.db.store import Store
from agentbox.errors import Conflict
from agentbox.providers.base import Usage, WorkspaceSpec
from agentbox.wire.domain import NewWorkspace
from agentbox.workspaces.background import Lifecycle
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.pool import WarmPool
from agentbox.workspaces.reconcile import Reconciler
from agentbox.workspaces.replicas import LEADER, Replica, ReplicaIdInUse
from agentbox.workspaces.usage import SharedSamples, UsageHistory
from tests.fake_provider import FakeProvider
from tests.unit.test_store import make_workspace


class Clocks:
    """The database's clock and every process's monotonic clock, moved together by hand."""

    def __init__(self) -> None:
        self.database = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        self.monotonic = 1000.0

    def now(self, _session: Session) -> datetime:
        return self.database

    def mono(self) -> float:
        return self.monotonic

    def advance(self, seconds: float) -> None:
        self.database += timedelta(seconds=seconds)
        self.monotonic += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def replica(store: Store, clocks: Clocks, replica_id: str) -> Replica:
    """A registered replica that has not looked at the lease yet."""
    address = f"127.0.0.1:{8000 + int(replica_id[1:])}"
    made = Replica(store, replica_id, address, clock=clocks.now, monotonic=clocks.mono, alone=False)
    made.register()
    return made


def lease_expiry(store: Store) -> datetime:
    with store.session() as session:
        lease = session.get(Lease, LEADER)
        assert lease is not None
        return lease.expires_at


# The lease


def test_the_first_replica_to_ask_leads_and_the_others_know_it(store: Store, clocks: Clocks) -> None:
    r1, r2 = replica(store, clocks, "r1"), replica(store, clocks, "r2")
    r1.tick()
    r2.tick()
    assert r1.leads() and not r2.leads()
    assert r1.leader == r2.leader == "r1"
    assert r1.alive == r2.alive == ["r1", "r2"]


def test_the_leader_renews_its_lease_and_keeps_it(store: Store, clocks: Clocks) -> None:
    r1, r2 = replica(store, clocks, "r1"), replica(store, clocks, "r2")
    r1.tick()
    first = lease_expiry(store)
    for _ in range(10):  # 60 s: four times the lease, renewed every 5 s
        clocks.advance(6)
        r1.tick()
        r2.tick()
        assert r1.leads() and not r2.leads()
    assert lease_expiry(store) == first + timedelta(seconds=60)


def test_a_dead_leaders_lease_is_taken_over_once_it_expires(store: Store, clocks: Clocks) -> None:
    r1, r2, r3 = (replica(store, clocks, f"r{n}") for n in (1, 2, 3))
    r1.tick()
    clocks.advance(5)
    r1.tick()  # renewed, then it dies
    clocks.advance(14)
    r2.tick()
    r3.tick()
    assert not r2.leads() and not r3.leads() and r2.leader == "r1"  # its lease still runs
    clocks.advance(1.5)
    r2.tick()
    r3.tick()
    assert r2.leads() and not r3.leads()  # one of them, decided by the database
    assert r3.leader == "r2"


def test_a_leader_that_cannot_renew_stops_before_another_may_start(store: Store, clocks: Clocks) -> None:
    r1, r2 = replica(store, clocks, "r1"), replica(store, clocks, "r2")
    r1.tick()
    # r1's database calls fail from now on (an outage, a stalled thread): it never renews.
    moments = []
    for _ in range(40):
        clocks.advance(0.5)
        r2.tick()
        moments.append((r1.leads(), r2.leads()))
    changes = [moment for i, moment in enumerate(moments) if i == 0 or moments[i - 1] != moment]
    # r1 led, then nobody for a moment (its margin before the lease's end), then r2: never both at once.
    assert changes == [(True, False), (False, False), (False, True)]


def test_a_lease_given_up_at_shutdown_is_taken_at_once(store: Store, clocks: Clocks) -> None:
    r1, r2 = replica(store, clocks, "r1"), replica(store, clocks, "r2")
    r1.tick()
    r2.tick()
    assert r1.leave() is False  # r2 is alive: not the last one out
    assert not r1.leads()
    r2.tick()
    assert r2.leads() and r2.alive == ["r2"]
    assert r2.leave() is True


def test_a_replica_that_is_alone_leads_at_once_after_a_crash(store: Store, clocks: Clocks) -> None:
    # One server on SQLite, restarted after a crash under a new (random) id: the old run's lease is no
    # reason to wait, since nothing else can use this database.
    crashed = replica(store, clocks, "r1")
    crashed.tick()
    restarted = Replica(store, "r9", clock=clocks.now, monotonic=clocks.mono)
    restarted.register()
    restarted.tick()
    assert restarted.leads() and restarted.live() == {"r9"}


# Heartbeats


def test_a_replica_is_alive_while_its_heartbeat_is_fresh(store: Store, clocks: Clocks) -> None:
    r1, r2 = replica(store, clocks, "r1"), replica(store, clocks, "r2")
    assert r1.live() == {"r1", "r2"}
    for _ in range(5):  # r2 stops beating; r1 goes on
        clocks.advance(2.5)
        r1.tick()
    assert r1.live() == {"r1"} and r1.alive == ["r1"]
    r2.tick()  # it was only slow
    assert r1.live() == {"r1", "r2"}


def test_an_id_in_use_by_a_live_process_is_refused(store: Store) -> None:
    running = Replica(store, "r1", heartbeat=0.1, timeout=2, alone=False)
    running.join()
    try:
        with pytest.raises(ReplicaIdInUse, match="WORKSPACE_REPLICA_ID=r1"):
            Replica(store, "r1", heartbeat=0.1, timeout=2).register()
    finally:
        running.leave()


def test_a_previous_run_that_died_a_moment_ago_leaves_its_id_free(store: Store) -> None:
    died = Replica(store, "r1", heartbeat=0.1, timeout=2)
    died.register()  # its heartbeat is fresh, but no thread beats it any more
    again = Replica(store, "r1", heartbeat=0.1, timeout=2)
    again.register()
    again.tick()
    assert again.leads()


# Reconciliation


def in_flight(store: Store, provider: FakeProvider, replica_id: str | None, status: Status, ref: bool = False) -> str:
    """A row being made by `replica_id`, with its sandbox half-made; its id."""
    workspace = make_workspace(new_workspace_id(), owner="" if status == Status.POOLED else "alice", status=status)
    workspace.replica = replica_id
    store.add(workspace, "created")
    made = provider.create(WorkspaceSpec(id=workspace.id, image="img", cpu=1, memory=1, disk=1, pids_limit=1))
    if ref:  # a start of an existing workspace: it has its sandbox already
        store.update(workspace.id, provider_ref=made)
    return workspace.id


def status_of(store: Store, workspace_id: str) -> str:
    found = store.get(workspace_id)
    assert found is not None
    return found.status


def test_what_a_dead_replica_was_making_is_given_up_and_a_live_ones_is_left(store: Store, clocks: Clocks) -> None:
    provider = FakeProvider("gvisor")
    r1, r2, _ = (replica(store, clocks, f"r{n}") for n in (1, 2, 3))
    live_create = in_flight(store, provider, "r2", Status.STARTING)
    dead_create = in_flight(store, provider, "r3", Status.STARTING)
    dead_start = in_flight(store, provider, "r3", Status.STARTING, ref=True)
    dead_boot = in_flight(store, provider, "r3", Status.POOLED)
    legacy = in_flight(store, provider, None, Status.STARTING)  # made before replicas were recorded
    reconciler = Reconciler(store, {"gvisor": provider}, None, Metrics(), r1)
    for _ in range(5):  # r3 dies; r1 and r2 beat on
        clocks.advance(2.5)
        r1.tick()
        r2.tick()
    assert r1.leads()

    reconciler.run()

    held = {sandbox.id for sandbox in provider.sandboxes.values()}
    assert status_of(store, live_create) == Status.STARTING and live_create in held  # still being made
    for gone in (dead_create, dead_boot, legacy):
        assert status_of(store, gone) == Status.DELETED and gone not in held
    record = store.get(dead_start)
    assert record is not None and record.status == Status.STOPPED and "start it again" in (record.error or "")
    assert dead_start in held  # its owner's workspace: stopped, never removed
    reconciler.run()  # and the next round finds it running (the start had gone that far)
    assert status_of(store, dead_start) == Status.RUNNING


def test_a_replica_that_does_not_lead_gives_up_only_its_own_previous_runs_work(store: Store, clocks: Clocks) -> None:
    provider = FakeProvider("gvisor")
    r1 = replica(store, clocks, "r1")
    r1.tick()
    mine = in_flight(store, provider, "r2", Status.STARTING)  # left by r2's previous run
    others = in_flight(store, provider, "r3", Status.STARTING)  # r3 is dead, but that is the leader's business
    orphan = provider.create(WorkspaceSpec(id="ws-orphan", image="img", cpu=1, memory=1, disk=1, pids_limit=1))
    r2 = replica(store, clocks, "r2")  # started again
    r2.tick()
    assert not r2.leads()

    Reconciler(store, {"gvisor": provider}, None, Metrics(), r2).run(startup=True, everything=False)

    assert status_of(store, mine) == Status.DELETED
    assert status_of(store, others) == Status.STARTING and orphan in provider.sandboxes


def test_a_create_given_up_meanwhile_never_comes_back(tmp_path: Path, store: Store) -> None:
    class GivenUpWhileCreating(FakeProvider):
        def create(self, spec: WorkspaceSpec) -> str:
            ref = super().create(spec)
            store.retire(spec.id, "abandoned", "the server stopped while this workspace was being created")
            return ref

    provider = GivenUpWhileCreating("gvisor")
    manager = WorkspaceManager(settings(tmp_path), store, {"gvisor": provider})
    with pytest.raises(Conflict, match="create it again"):
        manager.create("alice", NewWorkspace())
    assert provider.sandboxes == {}
    assert manager.find("alice") == []


# Leader-only work


def settings(tmp_path: Path, **more: str) -> Settings:
    return load_settings(ENABLE_AGENT_WORKSPACES="true", WORKSPACE_DATA_DIR=str(tmp_path), **more)


class Deployment:
    """One replica's manager, pool and loops over the shared store and provider (nothing started)."""

    def __init__(self, tmp_path: Path, store: Store, clocks: Clocks, replica_id: str, provider: FakeProvider) -> None:
        config = settings(tmp_path, WORKSPACE_WARM_POOL_SIZE="2", WORKSPACE_REPLICA_ID=replica_id)
        self.replica = replica(store, clocks, replica_id)
        self.pool = WarmPool(config, store, provider, Metrics())
        self.manager = WorkspaceManager(config, store, {"gvisor": provider}, pool=self.pool)
        self.enforced = 0
        self.manager.enforce_isolation = self._enforce  # type: ignore[method-assign]
        reconciler = Reconciler(store, {"gvisor": provider}, self.pool, Metrics(), self.replica)
        self.lifecycle = Lifecycle(self.manager, reconciler, self.pool, 30, self.replica)
        self.measured = 0
        self.usage = UsageHistory(self._measure, 10, shared=SharedSamples(store), leads=self.replica.leads)
        self.provider = provider

    def _enforce(self) -> None:
        self.enforced += 1

    def _measure(self) -> dict[str, Usage]:
        self.measured += 1
        return {
            w.id: Usage(cpu_seconds=1.0, memory_bytes=1 << 20) for w in self.manager.store.find(statuses=["running"])
        }


def expired_workspace(store: Store) -> str:
    workspace = make_workspace(new_workspace_id())
    workspace.expires_at = datetime(2020, 1, 1, tzinfo=UTC)
    store.add(workspace, "created")
    return workspace.id


def test_only_the_leader_reaps_reconciles_enforces_fills_and_samples(
    tmp_path: Path, store: Store, clocks: Clocks
) -> None:
    provider = FakeProvider("gvisor")
    leader, follower = (Deployment(tmp_path, store, clocks, f"r{n}", provider) for n in (1, 2))
    leader.replica.tick()
    follower.replica.tick()
    expired = expired_workspace(store)
    orphan = provider.create(WorkspaceSpec(id="ws-orphan", image="img", cpu=1, memory=1, disk=1, pids_limit=1))

    follower.lifecycle.round()
    follower.usage.round()
    assert status_of(store, expired) == Status.RUNNING and orphan in provider.sandboxes
    assert follower.pool.ready() == 0 and follower.enforced == 0 and follower.measured == 0

    leader.lifecycle.round()
    leader.usage.round()
    assert status_of(store, expired) == Status.DELETED and orphan not in provider.sandboxes
    assert leader.pool.ready() == 2 and leader.enforced == 1 and leader.measured == 1
    # A claim on the follower; the leader refills, once, to exactly the pool's size.
    claimed = follower.manager.create("bob", NewWorkspace())
    leader.lifecycle.round()
    follower.lifecycle.round()
    assert leader.pool.ready() == 2 and len(provider.sandboxes) == 3
    # The follower answers with the leader's samples.
    leader.usage.round()
    follower.usage.round()
    assert follower.usage.latest(claimed.id) is not None and follower.measured == 0

    # The leader dies; once its lease is over, the follower does the work.
    clocks.advance(16)
    follower.replica.tick()
    assert follower.replica.leads() and not leader.replica.leads()
    again = expired_workspace(store)
    leader.lifecycle.round()
    assert status_of(store, again) == Status.RUNNING
    follower.lifecycle.round()
    follower.usage.round()
    assert status_of(store, again) == Status.DELETED and follower.enforced == 1 and follower.measured == 1


def test_the_pool_stays_while_another_replica_runs_and_goes_with_the_last(
    tmp_path: Path, store: Store, clocks: Clocks
) -> None:
    provider = FakeProvider("gvisor")
    first, second = (Deployment(tmp_path, store, clocks, f"r{n}", provider) for n in (1, 2))
    first.replica.tick()
    second.replica.tick()
    first.lifecycle.round()
    assert first.pool.ready() == 2

    first.lifecycle.stop()
    assert first.pool.ready() == 2 and len(provider.sandboxes) == 2  # r2 claims from it still
    second.replica.tick()  # and leads now
    assert second.replica.leads()
    second.lifecycle.stop()
    assert second.pool.ready() == 0 and provider.sandboxes == {}


def test_a_lost_lease_stops_the_pool_between_two_boots(tmp_path: Path, store: Store, clocks: Clocks) -> None:
    booted = threading.Event()

    class SlowToBoot(FakeProvider):
        def create(self, spec: WorkspaceSpec) -> str:
            ref = super().create(spec)
            booted.set()
            clocks.advance(20)  # the first boot outlasts the lease (the thread that renews it is stuck)
            return ref

    deployment = Deployment(tmp_path, store, clocks, "r1", SlowToBoot("gvisor"))
    deployment.replica.tick()
    deployment.lifecycle.round()
    assert booted.is_set() and not deployment.replica.leads()
    assert len(deployment.provider.sandboxes) == 1  # the boot under way finished; no second one began
