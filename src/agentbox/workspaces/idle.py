"""Idle suspend, the leader's part: freeze the sandboxes of workspaces that wait.

A running workspace is suspended when its provider can (`Capabilities.suspend`), its idle timeout
is not 0, it has had no activity for that long (`active_at`: a call into it, or one still in flight,
activity.py), and it is not doing work by itself: its CPU since the previous look is at most
WORKSPACE_IDLE_CPU cores. So a background job at work keeps it awake and a server waiting for
requests does not. The CPU needs two looks, so a workspace is suspended one check after its timeout
at the earliest.

The row is marked first, guarded on no activity since it was read, then the sandbox is frozen, then
the row is read again: a caller that came in between (the manager's wake clears the mark, then
thaws) may have thawed before the freeze, so a mark found cleared is thawed again. The suspended
workspace stays `running`; any use wakes it (WorkspaceManager).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from agentbox.config import Settings
from agentbox.db.models import Status, Workspace, utcnow
from agentbox.db.store import Store
from agentbox.errors import AgentboxError
from agentbox.providers.base import Provider
from agentbox.workspaces.metrics import Metrics

log = logging.getLogger("agentbox.workspaces.idle")


class IdleSuspender:
    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.providers = providers
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        #: The CPU time of each idle candidate at the previous look: (monotonic seconds, CPU seconds).
        self._cpu: dict[str, tuple[float, float]] = {}

    def run(self) -> int:
        """Suspend every workspace that waits; how many."""
        now = self._clock()
        looked: dict[str, tuple[float, float]] = {}
        suspended = 0
        for workspace in self.store.awake_candidates():
            provider = self.providers.get(workspace.provider)
            if provider is None or not workspace.provider_ref or not provider.capabilities().suspend:
                continue
            timeout = workspace.idle_timeout if workspace.idle_timeout is not None else self.settings.idle_timeout
            since = workspace.active_at or workspace.created_at
            if not timeout or now - since < timedelta(seconds=timeout):
                continue
            try:
                if self._busy(workspace, provider, looked):
                    continue
                suspended += self._suspend(workspace, provider, now)
            except AgentboxError as exc:  # gone meanwhile, or the engine away: the next round
                log.warning("suspending idle workspace %s failed: %s", workspace.id, exc.detail)
        self._cpu = looked
        return suspended

    def _busy(self, workspace: Workspace, provider: Provider, looked: dict[str, tuple[float, float]]) -> bool:
        """Whether it used more than WORKSPACE_IDLE_CPU cores since the previous look (True at the first look:
        there is nothing to compare with yet). A provider that cannot measure: never busy."""
        assert workspace.provider_ref
        usage = provider.usage(workspace.provider_ref)
        if usage is None:
            return False
        at = self._monotonic()
        looked[workspace.id] = (at, usage.cpu_seconds)
        before = self._cpu.get(workspace.id)
        if before is None or at <= before[0]:
            return True
        return (usage.cpu_seconds - before[1]) / (at - before[0]) > self.settings.idle_cpu

    def _suspend(self, workspace: Workspace, provider: Provider, now: datetime) -> bool:
        assert workspace.provider_ref
        if not self.store.mark_suspended(workspace, now):
            return False  # used, stopped or deleted since it was read
        try:
            provider.suspend(workspace.provider_ref)
        except BaseException:
            self.store.mark_awake(workspace.id, {"active_at": self._clock()})  # tried again after another idle timeout
            raise
        after = self.store.get(workspace.id)
        if after is None or after.suspended_at is None or after.status != Status.RUNNING:
            provider.wake(workspace.provider_ref)  # woken (or stopped, deleted) while it was being frozen
            return False
        self.metrics.suspends.inc()
        log.info("workspace %s of %s suspended after %s s idle", workspace.id, workspace.owner, workspace.idle_timeout)
        return True
