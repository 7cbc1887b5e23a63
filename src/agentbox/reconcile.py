"""Reconciliation: make the database and the providers agree, at start-up and then every round.

- a sandbox with no live record is destroyed (an orphan of a crash or a failed delete);
- a running or stopped record whose sandbox vanished is marked failed (its data went with it;
  handing out an empty sandbox under the old id would hide that);
- a running record whose sandbox stopped (an engine restart) is marked stopped, and running
  again when the engine brings it back;
- at start-up only: records still `starting` are from requests that died with the server
  (their callers never got an id), so they and their sandboxes are removed; pooled ones that
  are not running are discarded.

Sandboxes are listed before records, and a record is always written before its sandbox, so an
in-flight create is never mistaken for an orphan. Changes go through guarded updates
(`Store.transition`), so a request that changed a row meanwhile wins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agentbox.metrics import Metrics
from agentbox.models import Status, Workspace
from agentbox.pool import WarmPool, discard_pooled
from agentbox.providers.base import Provider, ProviderState, distinct
from agentbox.store import ACTIVE, LIVE, Store

log = logging.getLogger("agentbox.reconcile")


class Reconciler:
    def __init__(
        self, store: Store, providers: Mapping[str, Provider], pool: WarmPool | None, metrics: Metrics
    ) -> None:
        self.store = store
        self.providers = providers
        self.pool = pool
        self.metrics = metrics

    def run(self, startup: bool = False) -> None:
        """One round; raises ProviderError when a provider cannot be listed (nothing is changed then)."""
        held: dict[str, tuple[Provider, str, ProviderState]] = {}
        for provider in distinct(self.providers.values()):
            for workspace_id, (ref, state) in provider.inventory().items():
                held[workspace_id] = (provider, ref, state)
        records = {w.id: w for w in self.store.find(statuses=[*LIVE, Status.POOLED.value])}

        for workspace_id, (provider, ref, _) in held.items():
            record = records.get(workspace_id)
            if record is None or (startup and record.status == Status.STARTING):
                log.warning("removing orphan workspace sandbox %s (no live record)", ref)
                provider.destroy(ref)
        for record in records.values():
            state = held[record.id][2] if record.id in held else "missing"
            if record.status == Status.RUNNING and state != "running" and record.provider_ref:
                # Looked at again: the inventory was taken before the records were read, and a
                # workspace that finished starting in between was not running then but is now.
                state = self._state_now(record, record.provider_ref, state)
            self._settle(record, state, startup)
            if state == "running" and record.status == Status.RUNNING and record.provider_ref and record.id in held:
                # Providers whose sandboxes end by themselves (E2B) keep them until their TTL.
                held[record.id][0].keep(record.provider_ref, record.expires_at)

    def _state_now(self, record: Workspace, ref: str, seen: ProviderState) -> ProviderState:
        provider = self.providers.get(record.provider)
        return provider.state(ref) if provider is not None else seen

    def _settle(self, record: Workspace, state: ProviderState, startup: bool) -> None:
        """Bring one record in line with its sandbox's `state`."""
        if record.status == Status.STARTING:
            if startup:
                self.store.retire(
                    record.id, "abandoned", "the server stopped while this workspace was being created", ACTIVE
                )
        elif record.status == Status.POOLED:
            booting = not record.provider_ref
            stale = self.pool is None or not self.pool.fits(record)
            if stale or (startup and booting) or (not booting and state != "running"):
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
