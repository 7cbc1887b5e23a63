"""The background loop: TTL expiry, reconciliation, providers' isolation, idle suspend, and the warm pool.

One thread, woken every `WORKSPACE_REAP_INTERVAL` seconds and whenever the manager says
something changed (a claim, a delete), so that the pool refills at once. A failure in one
round (the engine is down) is logged and retried at the next; it never stops the loop.

With several replicas on one database, only the leader (replicas.py) does this work: the others'
loops wait until they lead, and a replica that loses the lease stops between two steps (a pool boot
under way finishes; everything it touches is guarded, so the new leader's round is not upset by it).
A change on any replica wakes the leader's loop through the database (Replica.nudge).

It owns the pool's life: the leader fills it, and the last replica to stop drains it, so that idle
sandboxes do not outlive the service while no other replica claims from them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agentbox.errors import AgentboxError
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.pool import WarmPool
from agentbox.workspaces.reconcile import Reconciler
from agentbox.workspaces.replicas import Replica

log = logging.getLogger("agentbox.workspaces.background")

# After a claim or a delete, the refill waits until none has come for QUIET_SECONDS (at most
# SETTLE_SECONDS): booting a sandbox takes most of a CPU for half a second, and a burst of claims
# and first commands is served faster when the refill starts after it, not in the middle.
QUIET_SECONDS = 0.3
SETTLE_SECONDS = 2.0
# How often providers re-assert isolation (the Docker firewall is rewritten and re-hooked), so that a
# flush leaves it open this long at most.
ENFORCE_SECONDS = 5.0
# How often a replica that does not lead looks again, should a wake-up be missed.
FOLLOWER_SECONDS = 1.0


class Lifecycle:
    def __init__(
        self,
        manager: WorkspaceManager,
        reconciler: Reconciler,
        pool: WarmPool | None,
        interval: float,
        replica: Replica | None = None,
    ) -> None:
        """`replica`: this process among several sharing the database (None: the only server, which leads)."""
        self.manager = manager
        self.reconciler = reconciler
        self.pool = pool
        self.interval = interval
        self.replica = replica
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentbox-lifecycle", daemon=True)

    def leads(self) -> bool:
        return not self._stop.is_set() and (self.replica is None or self.replica.leads())

    def start(self) -> None:
        self.manager.on_change = self.changed
        if self.replica is not None:
            self.replica.on_change = self._wake.set
        self._thread.start()

    def changed(self) -> None:
        """Something that the pool may answer happened here (a claim, a delete): wake the leader, here or not."""
        self._wake.set()
        if self.replica is not None:
            self.replica.nudge()

    def stop(self) -> None:
        """End the loop, leave the replicas, and remove the idle pool if no other replica is alive (the next
        start-up reconciles what a failure leaves)."""
        self._stop.set()
        self._wake.set()
        if self.pool is not None:
            self.pool.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=120)
        # Leaving first: of two replicas stopping at once, the later to look finds the other gone.
        last = self.replica.leave() if self.replica is not None else True
        if last:
            try:
                self.manager.template_pools.drain()
            except AgentboxError as exc:  # the next start-up reconciles what is left
                log.warning("removing the templates' pools at shutdown failed: %s", exc.detail)
        if self.pool is None:
            return
        if not last:
            log.info("other replicas are alive: the warm pool stays for them")
            return
        try:
            self.pool.drain()
        except AgentboxError as exc:  # the next start-up reconciles what is left
            log.warning("removing the warm pool at shutdown failed: %s", exc.detail)

    def round(self, sweep: bool = True, enforce: bool = True, idle: bool = True) -> None:
        """One round of the leader's work (nothing on a replica that does not lead): expiry and reconciliation
        when `sweep`, isolation when `enforce`, idle suspend when `idle`, and the pool's refill."""
        if sweep:
            self._guarded("expiring workspaces", self.manager.reap_expired)
            self._guarded("reconciling with the engine", self.reconciler.run)
        if enforce:
            self._guarded("re-asserting isolation", self.manager.enforce_isolation)
        if idle:
            self._guarded("suspending idle workspaces", self.manager.idle.run)
        if self.pool is not None:
            self._guarded("filling the warm pool", self._fill)
        self._guarded("filling the templates' pools", lambda: self.manager.template_pools.fill(self.leads))

    def _run(self) -> None:
        periods = {
            "sweep": self.interval,
            "enforce": ENFORCE_SECONDS,
            "idle": self.manager.settings.idle_check_interval,
        }
        due = dict.fromkeys(periods, 0.0)
        while not self._stop.is_set():
            if not self.leads():
                due = dict.fromkeys(periods, 0.0)  # on taking the lead: a whole round at once
                self._wake.wait(FOLLOWER_SECONDS)
                self._wake.clear()
                continue
            now = time.monotonic()
            steps = {step: now >= at for step, at in due.items()}
            for step, period in periods.items():
                if steps[step]:
                    due[step] = now + period
            self.round(**steps)
            if self._wake.wait(timeout=max(0.0, min(due.values()) - time.monotonic())):
                self._settle()
            self._wake.clear()

    def _fill(self) -> None:
        assert self.pool is not None
        self.pool.fill(keep_going=self.leads)

    def _settle(self) -> None:
        """Woken by a claim or a delete: wait for the burst it may be part of to pass."""
        give_up = time.monotonic() + SETTLE_SECONDS
        self._wake.clear()
        while not self._stop.is_set() and time.monotonic() < give_up:
            if not self._wake.wait(min(QUIET_SECONDS, give_up - time.monotonic())):
                return
            self._wake.clear()

    def _guarded(self, what: str, work: Callable[[], object]) -> None:
        """Do one step of the leader's work, unless this replica no longer leads; log a failure."""
        if not self.leads():
            return
        try:
            work()
        except AgentboxError as exc:
            log.warning("%s failed (retrying later): %s", what, exc.detail)
        except Exception:
            log.exception("%s failed (retrying later)", what)
