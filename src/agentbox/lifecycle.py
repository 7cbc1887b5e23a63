"""The background loop: TTL expiry, reconciliation, providers' isolation, and the warm pool.

One thread, woken every `WORKSPACE_REAP_INTERVAL` seconds and whenever the manager says
something changed (a claim, a delete), so that the pool refills at once. A failure in one
round (the engine is down) is logged and retried at the next; it never stops the loop.
It owns the pool's life: it fills it while it runs, and drains it when it stops, so that
idle sandboxes do not outlive the service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agentbox.errors import AgentboxError
from agentbox.manager import WorkspaceManager
from agentbox.pool import WarmPool
from agentbox.reconcile import Reconciler

log = logging.getLogger("agentbox.lifecycle")

# After a claim or a delete, the refill waits until none has come for QUIET_SECONDS (at most
# SETTLE_SECONDS): booting a sandbox takes most of a CPU for half a second, and a burst of claims
# and first commands is served faster when the refill starts after it, not in the middle.
QUIET_SECONDS = 0.3
SETTLE_SECONDS = 2.0
# How often providers re-assert isolation (the Docker firewall is rewritten and re-hooked), so that a
# flush leaves it open this long at most.
ENFORCE_SECONDS = 5.0


class Lifecycle:
    def __init__(
        self, manager: WorkspaceManager, reconciler: Reconciler, pool: WarmPool | None, interval: float
    ) -> None:
        self.manager = manager
        self.reconciler = reconciler
        self.pool = pool
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentbox-lifecycle", daemon=True)

    def start(self) -> None:
        self.manager.on_change = self._wake.set
        self._thread.start()

    def stop(self) -> None:
        """End the loop, then remove the idle pool (the next start-up reconciles what a failure leaves)."""
        self._stop.set()
        self._wake.set()
        if self.pool is not None:
            self.pool.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=120)
        if self.pool is not None:
            try:
                self.pool.drain()
            except AgentboxError as exc:  # the next start-up reconciles what is left
                log.warning("removing the warm pool at shutdown failed: %s", exc.detail)

    def _run(self) -> None:
        next_sweep = next_enforce = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.interval
                self._guarded("expiring workspaces", self.manager.reap_expired)
                self._guarded("reconciling with the engine", self.reconciler.run)
            if time.monotonic() >= next_enforce:
                next_enforce = time.monotonic() + ENFORCE_SECONDS
                self._guarded("re-asserting isolation", self.manager.enforce_isolation)
            if self.pool is not None:
                self._guarded("filling the warm pool", self.pool.fill)
            if self._wake.wait(timeout=max(0.0, min(next_sweep, next_enforce) - time.monotonic())):
                self._settle()
            self._wake.clear()

    def _settle(self) -> None:
        """Woken by a claim or a delete: wait for the burst it may be part of to pass."""
        give_up = time.monotonic() + SETTLE_SECONDS
        self._wake.clear()
        while not self._stop.is_set() and time.monotonic() < give_up:
            if not self._wake.wait(min(QUIET_SECONDS, give_up - time.monotonic())):
                return
            self._wake.clear()

    @staticmethod
    def _guarded(what: str, work: Callable[[], object]) -> None:
        try:
            work()
        except AgentboxError as exc:
            log.warning("%s failed (retrying later): %s", what, exc.detail)
        except Exception:
            log.exception("%s failed (retrying later)", what)
