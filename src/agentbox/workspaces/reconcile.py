"""Reconciliation: make the database and the providers agree, at start-up and then every round.

- a sandbox with no live record is destroyed (an orphan of a crash or a failed delete);
- a running or stopped record whose sandbox vanished is marked failed (its data went with it;
  handing out an empty sandbox under the old id would hide that), once two rounds in a row found it
  missing: one round may fall between a delete's removal of the sandbox and of the row;
- a running record whose sandbox stopped (an engine restart) is marked stopped, and running
  again when the engine brings it back;
- a volume's or a snapshot's storage that no record names is removed: what a crash between making the
  storage and writing its row left (the storage comes first, so one being made has no row yet: it goes
  only once it stayed unnamed for STRAY_GRACE, or at a start-up with no other replica alive);
- what a replica was making when it died is given up: its `starting` records of creates (their
  callers never got an id) are removed with their sandboxes, those of starts are stopped again,
  and the pool workspaces it was booting are discarded. A replica is dead when its heartbeat is
  stale (replicas.py); at its own start-up, a replica gives up what its previous run left (it
  checked that no other process runs under its id). Another live replica's are never touched.
  Pooled ones whose sandbox stopped are discarded.

With several replicas only the leader runs rounds; a replica that does not lead runs the start-up
part that concerns its own previous run (`everything=False`). Sandboxes are listed before records,
and a record is always written before its sandbox, so an in-flight create (on any replica) is never
mistaken for an orphan; the live replicas are read after the records, so a replica that began after
the look cannot have rows in it. Changes go through guarded updates (`Store.transition`), so a
request that changed a row meanwhile wins, and a sandbox is destroyed only once its record is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from sqlalchemy import select

from agentbox.db.models import Snapshot, Status, Volume, Workspace
from agentbox.db.store import LIVE, Store
from agentbox.errors import AgentboxError
from agentbox.providers.base import Provider, ProviderState, distinct
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.pool import WarmPool, discard_pooled
from agentbox.workspaces.replicas import Replica

log = logging.getLogger("agentbox.workspaces.reconcile")

#: How long a volume's or snapshot's storage may go unnamed by any record before it is taken for a crash's
#: leftover: longer than the slowest make (a snapshot's copy may take 10 minutes, snapshots.COPY_TIMEOUT).
STRAY_GRACE = 15 * 60.0


class Reconciler:
    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        pool: WarmPool | None,
        metrics: Metrics,
        replica: Replica | None = None,
    ) -> None:
        """`replica`: this process among several on one database; None: the only server, whose start-up is
        the one moment when nothing is being made."""
        self.store = store
        self.providers = providers
        self.pool = pool
        self.metrics = metrics
        self.replica = replica
        #: Whether a pooled row belongs to a template's pool that is wanted (set by the server: the manager's
        #: TemplatePools.fits); such rows are not the default pool's to judge.
        self.template_pooled: Callable[[Workspace], bool] = lambda _workspace: False
        # Template builds of replicas no longer alive (`alive`, and whether this is the start-up) end with them.
        self.builds_gone: Callable[[set[str], bool], None] = lambda _alive, _startup: None
        # Records whose sandbox the last round found missing. A delete removes the sandbox, then the row:
        # a round between the two sees a running record with no sandbox. So a round marks one failed only
        # when the round before saw it missing too (or at the start-up of the only server, when no delete
        # can be in flight).
        self._missing: set[str] = set()
        # Storage of volumes and snapshots no record named, and when a round first saw it so.
        self._stray: dict[tuple[str, str], float] = {}

    def run(self, startup: bool = False, everything: bool = True) -> None:
        """One round; raises ProviderError when a provider cannot be listed (nothing is changed then).

        `everything` False: only give up what this replica's previous run left half-made (at the start-up
        of a replica that does not lead)."""
        held: dict[str, tuple[Provider, str, ProviderState]] = {}
        for provider in distinct(self.providers.values()):
            for workspace_id, (ref, state) in provider.inventory().items():
                held[workspace_id] = (provider, ref, state)
        records = {w.id: w for w in self.store.find(statuses=[*LIVE, Status.POOLED.value])}
        alive = self.replica.live() if self.replica is not None else set()

        given_up = {record.id for record in records.values() if self._abandoned(record, alive, startup, everything)}
        for workspace_id in given_up:
            if everything and not self._leads():
                return
            self._give_up(records[workspace_id], held.get(workspace_id))
        if not everything:
            return
        self.builds_gone(alive, startup)
        for workspace_id, (provider, ref, _) in held.items():
            if not self._leads():
                return  # lost the lease: the new leader does the rest
            if workspace_id not in records:
                log.warning("removing orphan workspace sandbox %s (no live record)", ref)
                provider.destroy(ref)
        missing: set[str] = set()
        for record in records.values():
            if record.id in given_up:
                continue
            if not self._leads():
                return
            state = held[record.id][2] if record.id in held else "missing"
            if record.status == Status.RUNNING and state != "running" and record.provider_ref:
                # Looked at again: the inventory was taken before the records were read, and a
                # workspace that finished starting in between was not running then but is now.
                state = self._state_now(record, record.provider_ref, state)
            if state == "missing" and record.id not in self._missing and not (startup and self.replica is None):
                missing.add(record.id)
                continue
            self._settle(record, state)
            if state == "running" and record.status == Status.RUNNING and record.provider_ref and record.id in held:
                # Providers whose sandboxes end by themselves (E2B) keep them until their TTL.
                held[record.id][0].keep(record.provider_ref, record.expires_at)
        self._missing = missing
        if self._leads():
            self._sweep_storage(startup)

    def _sweep_storage(self, startup: bool) -> None:
        """Remove the volumes' and snapshots' storage no record names, once it stayed so for STRAY_GRACE, or at
        once at a start-up with no other replica alive (nothing can be in the making then). The storage is
        listed before the records and the replicas are read, as sandboxes are."""
        held: dict[tuple[str, str], Provider] = {}
        for provider in distinct(self.providers.values()):
            held |= {("volume", ref): provider for ref in provider.volume_ids()}
            held |= {("snapshot", ref): provider for ref in provider.snapshot_refs()}
        if not held:
            self._stray.clear()
            return
        with self.store.session() as session:
            named = {("volume", ref) for ref in session.scalars(select(Volume.id))}
            named |= {("snapshot", ref) for ref in session.scalars(select(Snapshot.provider_ref))}
        at_once = startup and (self.replica is None or not self.replica.others_alive())
        now = time.monotonic()
        self._stray = {key: self._stray.get(key, now) for key in held.keys() - named}
        for key, since in list(self._stray.items()):
            if not at_once and now - since < STRAY_GRACE:
                continue
            kind, ref = key
            log.warning("removing the storage of %s %s: no record names it (left by a crash?)", kind, ref)
            try:
                if kind == "volume":
                    held[key].destroy_volume(ref)
                else:
                    held[key].delete_snapshot(ref)
            except AgentboxError as exc:  # tried again next round
                log.warning("could not remove the storage of %s %s: %s", kind, ref, exc.detail)
                continue
            del self._stray[key]

    def _leads(self) -> bool:
        return self.replica is None or self.replica.leads()

    def _state_now(self, record: Workspace, ref: str, seen: ProviderState) -> ProviderState:
        provider = self.providers.get(record.provider)
        return provider.state(ref) if provider is not None else seen

    def _abandoned(self, record: Workspace, alive: set[str], startup: bool, everything: bool) -> bool:
        """Whether `record` is something being made (created, started, booted into the pool) by a replica
        that is no longer there."""
        in_flight = record.status == Status.STARTING or (record.status == Status.POOLED and not record.provider_ref)
        if not in_flight:
            return False
        if self.replica is None or record.replica == self.replica.id:
            return startup  # this process's previous run (before it, nothing of this run's is in flight)
        # A replica dead for REPLICA_TIMEOUT, or a row made before replicas were recorded.
        return everything and (record.replica is None or record.replica not in alive)

    def _give_up(self, record: Workspace, sandbox: tuple[Provider, str, ProviderState] | None) -> None:
        """Undo what a dead replica was making: the row first (guarded), then the sandbox if the row went."""
        if record.status == Status.POOLED:
            gone = self.store.retire(record.id, "pool_discarded", "the replica booting it stopped", ("pooled",))
        elif record.provider_ref:
            # A start of an existing workspace: its owner has it, so it is stopped, not removed; the next
            # round finds it running if the start got that far.
            self.store.transition(
                record.id,
                (Status.STARTING.value,),
                "start_abandoned",
                status=Status.STOPPED.value,
                error="the server starting it stopped; start it again",
            )
            return
        else:
            gone = self.store.retire(
                record.id,
                "abandoned",
                "the server stopped while this workspace was being created",
                (Status.STARTING.value,),
            )
        if gone is not None and sandbox is not None:
            log.warning("removing the sandbox %s of %s, whose replica stopped while making it", sandbox[1], record.id)
            sandbox[0].destroy(sandbox[1])

    def _settle(self, record: Workspace, state: ProviderState) -> None:
        """Bring one record in line with its sandbox's `state`."""
        if record.status == Status.STARTING:
            return  # being made by a live replica
        if record.status == Status.POOLED:
            booting = not record.provider_ref
            stale = (self.pool is None or not self.pool.fits(record)) and not self.template_pooled(record)
            if stale or (not booting and state != "running"):
                discard_pooled(self.store, self.providers.get(record.provider), record)
        elif state == "missing" and record.status in (Status.RUNNING, Status.STOPPED):
            self.metrics.failures.labels("vanished").inc()
            log.warning("workspace %s: its sandbox vanished; marking it failed", record.id)
            self.store.transition(
                record.id,
                (record.status,),
                "vanished",
                status=Status.FAILED.value,
                error="its sandbox disappeared (removed outside agentbox, or lost with the engine); "
                "delete it and create a new one",
            )
        elif state == "running" and record.status == Status.STOPPED and record.error:
            # It stopped outside agentbox and the engine brought it back (restart policy).
            self.store.transition(
                record.id, (Status.STOPPED.value,), "running_again", status=Status.RUNNING.value, error=None
            )
        elif state == "stopped" and record.status == Status.RUNNING:
            self.store.transition(
                record.id,
                (Status.RUNNING.value,),
                "stopped_outside",
                status=Status.STOPPED.value,
                error="it stopped outside agentbox (an engine restart?); start it again",
            )
