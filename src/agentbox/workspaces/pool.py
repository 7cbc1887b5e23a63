"""The warm pool: pre-booted workspaces of the default image and limits, waiting for an owner.

Pooled workspaces are rows with status `pooled` and no owner, so that they survive a
restart of the server and reconciliation knows them. A claim turns the row into an
ordinary running workspace in one guarded update; everything a request may vary without
changing the container (owner, labels, TTL, env: applied to each exec) is set then.

With several replicas, any replica claims (under the admission lock in the database, so two never
take one row and the cap stays exact) and only the leader fills: a booting row records the replica
booting it, so that its death lets the next leader discard it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from agentbox.config import Settings
from agentbox.db.models import Status, Workspace, new_workspace_id, utcnow
from agentbox.db.store import Store
from agentbox.errors import AgentboxError, ProviderError, reason_of
from agentbox.providers.base import Provider, WorkspaceSpec
from agentbox.sandbox.runtime import ExecRequest
from agentbox.wire.domain import NewWorkspace
from agentbox.wire.network import columns_of
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.templates import is_template_image

#: Two: the Docker helper keeps two workers waiting for calls and hands them out in turn, so each serves one.
WARM_UP_COMMANDS = 2

log = logging.getLogger("agentbox.workspaces.pool")

POOLED = (Status.POOLED.value,)


class WarmPool:
    def __init__(self, settings: Settings, store: Store, provider: Provider, metrics: Metrics) -> None:
        """A pool of `settings.warm_pool_size` workspaces of `provider` (the default one) with the default
        image, limits and network policy. The background loop (background.py) fills, stops and drains it."""
        self.settings = settings
        self.store = store
        self.provider_name = provider.name
        self.provider = provider
        self.metrics = metrics
        self._network = columns_of(settings.network_policy, settings.network_name)
        self._stopping = threading.Event()

    @property
    def size(self) -> int:
        return self.settings.warm_pool_size

    def serves(self, provider_name: str, request: NewWorkspace, network: dict[str, object]) -> bool:
        """Whether a pooled container is exactly what `request` (with these network columns) asks for."""
        s = self.settings
        return (
            self.size > 0
            and network == self._network
            and provider_name == self.provider_name
            and request.image in (None, s.image)
            and request.cpu in (None, s.default_cpu)
            and request.memory in (None, s.default_memory)
            and request.disk in (None, s.default_disk)
        )

    def _spec(self) -> dict[str, object]:
        """The columns every pooled workspace has under the current settings."""
        s = self.settings
        return {
            "provider": self.provider_name,
            "image": s.image,
            "cpu": s.default_cpu,
            "memory": s.default_memory,
            "disk": s.default_disk,
            "pids_limit": s.pids_limit,
            **self._network,
        }

    def fits(self, workspace: Workspace) -> bool:
        return all(getattr(workspace, column) == value for column, value in self._spec().items())

    def pooled(self) -> list[Workspace]:
        # Not the templates' pools' (template_pools.py): theirs to fill and discard.
        return [w for w in self.store.find(owner="", statuses=POOLED) if not is_template_image(w.image)]

    def ready(self) -> int:
        return sum(1 for w in self.pooled() if w.provider_ref)

    def take(self, **claim: object) -> Workspace | None:
        """Hand a ready pooled workspace over with the row fields in `claim`; None if none is ready.

        The caller holds the admission lock; the store's guarded update protects against the
        pool discarding the same row meanwhile.
        """
        # Not by allow list (JSON has no portable equality): pooled rows that do not fit the
        # settings are discarded at start-up, before any claim.
        match = {column: value for column, value in self._spec().items() if column not in ("allow", "egress")}
        claimed = self.store.claim(match, **claim)
        if claimed is not None:
            self.metrics.claims.inc()
        return claimed

    def _target(self) -> int:
        """How many to keep: pooled workspaces never count against the cap, so the pool shrinks near it."""
        return min(self.size, max(0, self.settings.max_concurrent - self.store.count_active()))

    def fill(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Shrink to fit the cap and the settings, then boot containers until the pool is full, or until
        `keep_going` says no (this replica lost the lead)."""
        pooled = self.pooled()
        target = self._target()
        keep = sorted((w for w in pooled if self.fits(w)), key=lambda w: w.provider_ref is None)
        for workspace in [w for w in pooled if not self.fits(w)] + keep[target:]:
            self.discard(workspace)
        have = min(len(keep), target)
        while have < self._target() and not self._stopping.is_set() and keep_going():
            if not self._boot_one():
                return  # try again at the next round rather than spin on a broken engine or image
            have += 1

    def _boot_one(self) -> bool:
        now = utcnow()
        workspace = Workspace(
            id=new_workspace_id(),
            owner="",
            runtime=self.provider.capabilities().runtime,
            status=Status.POOLED.value,
            ephemeral=True,
            env={},
            labels={},
            replica=self.settings.replica_id,
            created_at=now,
            updated_at=now,
            **self._spec(),
        )
        self.store.add(workspace, "pool_boot")
        try:
            if isinstance(workspace.allow, list):  # resolved at each boot: the names' addresses may change
                workspace.allow_cidrs = self.provider.resolve_allow_list(workspace.allow)
                self.store.update(workspace.id, allow_cidrs=workspace.allow_cidrs)
            ref = self.provider.create(WorkspaceSpec.of(workspace))
            self._first_commands(ref)
        except Exception as exc:
            reason = reason_of(exc)
            log.warning("warm pool: booting a workspace failed: %s", reason)
            self.metrics.failures.labels("pool").inc()
            self.store.retire(workspace.id, "pool_failed", reason)
            return False
        if (
            self.store.transition(workspace.id, POOLED, "pool_ready", provider_ref=ref, suspended_at=self._suspend(ref))
            is None
        ):
            self.provider.destroy(ref)  # discarded while it booted
        return True

    def _suspend(self, ref: str) -> datetime | None:
        """Freeze a ready workspace, where its provider can, until a claim wakes it: a pool that waits costs no
        CPU. When it was frozen (None: it was not, and waits awake)."""
        if not self.provider.capabilities().suspend:
            return None
        try:
            self.provider.suspend(ref)
        except AgentboxError as exc:
            log.warning("warm pool: suspending a ready workspace failed, it waits awake: %s", exc.detail)
            return None
        return utcnow()

    def _first_commands(self, ref: str) -> None:
        """Run a command or two before the workspace counts as ready: it proves the workspace works, and
        the owner's first command no longer pays for a sandbox's first start of a program (under gVisor,
        ~20 ms of loading the C library and looking up files, and the helper's workers' first faults)."""
        runtime = self.provider.runtime(ref)
        for _ in range(WARM_UP_COMMANDS):
            result = runtime.exec(ExecRequest(argv=["true"], timeout=30))
            if result.exit_code != 0:
                raise ProviderError(
                    f"a new workspace cannot run `true` (exit code {result.exit_code}): {result.stderr}"
                )

    def discard(self, workspace: Workspace) -> None:
        discard_pooled(self.store, self.provider, workspace)

    def stop(self) -> None:
        """Interrupt a fill between two boots."""
        self._stopping.set()

    def drain(self) -> None:
        """Destroy every pooled workspace (when the last replica stops: idle containers should not outlive
        the service, but the others still claim them while any runs)."""
        for workspace in self.pooled():
            self.discard(workspace)


def discard_pooled(store: Store, provider: Provider | None, workspace: Workspace) -> None:
    """Remove a pooled workspace, unless a claim took it first (`provider` None: no longer configured)."""
    gone = store.retire(workspace.id, "pool_discarded", expected=POOLED)
    if gone is not None and workspace.provider_ref and provider is not None:
        provider.destroy(workspace.provider_ref)
