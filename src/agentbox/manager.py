"""Workspace lifecycle: ownership, admission, persistence, and which provider does the work.

The manager is the only place that combines the store and the providers; it never knows
how a provider runs things. All methods block (database and engine calls) and are meant
to run in worker threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta

from agentbox.config import Settings
from agentbox.domain import Command, NewWorkspace
from agentbox.errors import BadRequest, Conflict, NotFound, ProviderError, TooManyWorkspaces, reason_of
from agentbox.firewall import Firewall, Grants
from agentbox.github.service import GitHub
from agentbox.metrics import Metrics
from agentbox.models import Status, Workspace, new_workspace_id, utcnow
from agentbox.network import NO_NETWORK, AllowList, NetworkPolicy, mac_address
from agentbox.pool import WarmPool, discard_pooled
from agentbox.providers.base import (
    DirEntry,
    ExecEvent,
    ExecRequest,
    ExecResult,
    FileStat,
    Provider,
    ProviderState,
    Resources,
    WorkspaceSpec,
)
from agentbox.store import ACTIVE, LIVE, Store

log = logging.getLogger("agentbox.manager")


class WorkspaceManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: Mapping[str, Provider],
        unavailable: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        firewall: Firewall | None = None,
        github: GitHub | None = None,
    ) -> None:
        self.settings = settings
        self.firewall = firewall
        self.github = github
        self.store = store
        self.providers = dict(providers)
        # Providers that exist but cannot be used here, with the reason and the fix.
        self.unavailable = dict(unavailable or {})
        self.metrics = metrics or Metrics()
        self.pool: WarmPool | None = None
        if settings.warm_pool_size > 0 and settings.default_provider in self.providers:
            self.pool = WarmPool(
                settings,
                store,
                settings.default_provider,
                self.providers[settings.default_provider],
                self.metrics,
                room=lambda: settings.max_concurrent - store.count_active(),
                network=self.network_columns(settings.network_policy),
                before_create=self._before_create,
            )
        #: Called when the pool may need refilling or shrinking (set by the lifecycle loop).
        self.on_change: Callable[[], None] = lambda: None
        self.metrics.observe(store.count_active, self.pool.ready if self.pool else lambda: 0)

    # Lifecycle

    def create(self, owner: str, request: NewWorkspace) -> Workspace:
        """A running workspace of `owner`, with the repository asked for checked out in it."""
        if request.repo is None:
            return self._create(owner, request)
        if self.github is None:
            raise BadRequest("repo: GitHub Apps are not configured on this server (GITHUB_APP_ENCRYPTION_KEY)")
        app = self.github.choose(owner, request.repo)  # a missing App is a 400 before anything is made
        workspace = self._create(owner, request)
        try:
            repo = self.github.checkout(app, request.repo, self._provider(workspace.provider), self._ref(workspace))
        except BaseException as exc:
            self.metrics.failures.labels("checkout").inc()
            self._provider(workspace.provider).destroy(self._ref(workspace))
            self.store.update(
                workspace.id, "checkout_failed", status=Status.DELETED.value, error=reason_of(exc), deleted_at=utcnow()
            )
            self.fence()
            self.on_change()
            raise
        return self.store.update(workspace.id, "checked_out", repo=repo)

    def _create(self, owner: str, request: NewWorkspace) -> Workspace:
        started = time.monotonic()
        provider_name = request.provider or self.settings.default_provider
        provider = self._provider(provider_name)
        asked = [name for name in ("cpu", "memory", "disk") if getattr(request, name) is not None]
        if asked and not provider.capabilities().sized_per_request:
            raise BadRequest(
                f"{', '.join(asked)}: a {provider_name} workspace gets them from its template, not per request; "
                "choose a template (`image`) built with the sizes you need"
            )
        now = utcnow()
        ttl_days = (request.ttl_days or self.settings.default_ttl_days) if request.ephemeral else None
        expires_at = now + timedelta(days=ttl_days) if ttl_days is not None else None
        policy = request.network if request.network is not None else self.settings.network_policy
        kind = "allow" if isinstance(policy, AllowList) else policy
        if kind not in provider.capabilities().network_policies:
            enforced = ", ".join(sorted(provider.capabilities().network_policies))
            raise BadRequest(
                f"network {kind!r}: the {provider_name} provider cannot enforce it (it can: {enforced}); "
                "ask for one of those, or use the gvisor or docker provider"
            )
        network = self.network_columns(policy)
        claim = {
            "owner": owner,
            "ephemeral": request.ephemeral,
            "ttl_days": ttl_days,
            "env": dict(request.env),
            "labels": dict(request.labels),
            "created_at": now,
            "expires_at": expires_at,
        }
        pool = self.pool if self.pool is not None and self.pool.serves(provider_name, request, network) else None
        # Resolved before admission, not under it: a name lookup may take seconds. (A pooled
        # workspace has its own; a cold create after an empty pool resolves in _before_create.)
        allow_cidrs = None if pool is not None else self._resolve(network["allow"])
        with self.store.admission():
            self._check_room()
            if pool is not None:
                claimed = pool.take(status=Status.RUNNING.value, **claim)
                if claimed is not None:
                    self.on_change()
                    return self._handed_out("pool", claimed, started)
            workspace = Workspace(
                id=new_workspace_id(),
                provider=provider_name,
                runtime=provider.capabilities().runtime,
                status=Status.STARTING.value,
                image=request.image or self.settings.image,
                cpu=request.cpu or self.settings.default_cpu,
                memory=request.memory or self.settings.default_memory,
                disk=request.disk or self.settings.default_disk,
                pids_limit=self.settings.pids_limit,
                allow_cidrs=allow_cidrs,
                updated_at=now,
                **network,
                **claim,
            )
            self.store.add(workspace, "created", image=workspace.image)
        self.on_change()  # a cold start may leave the pool too big for the cap
        try:
            self._before_create(workspace)
            ref = provider.create(WorkspaceSpec.of(workspace))
        except BaseException as exc:
            # The caller gets the error and no id: hide the row, keep its story in the events.
            self.metrics.failures.labels("create").inc()
            self.store.update(
                workspace.id, "create_failed", status=Status.DELETED.value, error=reason_of(exc), deleted_at=utcnow()
            )
            raise
        actual = vars(provider.resources(ref) or Resources())
        sizes = {name: value for name, value in actual.items() if value is not None}
        created = self.store.update(workspace.id, "started", status=Status.RUNNING.value, provider_ref=ref, **sizes)
        return self._handed_out("cold", created, started)

    def _handed_out(self, source: str, workspace: Workspace, started: float) -> Workspace:
        self.metrics.creates.labels(source).inc()
        self.metrics.create_seconds.labels(source).observe(time.monotonic() - started)
        return workspace

    def get(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.store.get(workspace_id)
        if workspace is None or workspace.owner != owner or workspace.status == Status.DELETED:
            raise NotFound(f"no workspace {workspace_id!r}: list yours with GET /api/v1/workspaces")
        return workspace

    def find(
        self, owner: str, status: Status | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Workspace]:
        statuses = [status.value] if status else list(LIVE)
        found = self.store.find(owner=owner, statuses=statuses)
        wanted = dict(labels or {})
        return [w for w in found if all(w.labels.get(k) == v for k, v in wanted.items())]

    def delete(self, owner: str, workspace_id: str) -> None:
        workspace = self.get(owner, workspace_id)
        if workspace.provider_ref:
            self._provider(workspace.provider).destroy(workspace.provider_ref)
        self.store.update(workspace.id, "deleted", status=Status.DELETED.value, deleted_at=utcnow())
        self.fence()
        self.on_change()

    def stop(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.get(owner, workspace_id)
        if workspace.status == Status.STOPPED:
            return workspace
        self._require(workspace, Status.RUNNING, "stop")
        provider = self._provider(workspace.provider)
        if not provider.capabilities().stop_start:
            raise BadRequest(f"a {workspace.provider} workspace cannot be stopped and started: delete it when done")
        provider.stop(self._ref(workspace))
        stopped = self.store.update(workspace.id, "stopped", status=Status.STOPPED.value, error=None)
        self.on_change()
        return stopped

    def start(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.get(owner, workspace_id)
        if workspace.status == Status.RUNNING:
            return workspace
        self._require(workspace, Status.STOPPED, "start")
        with self.store.admission():
            self._check_room()
            self.store.update(workspace.id, "starting", status=Status.STARTING.value)
        try:
            self._provider(workspace.provider).start(self._ref(workspace))
        except BaseException as exc:
            self.metrics.failures.labels("start").inc()
            self.store.update(workspace.id, "start_failed", status=Status.STOPPED.value, error=reason_of(exc))
            raise
        return self.store.update(workspace.id, "started", status=Status.RUNNING.value, error=None)

    def extend(self, owner: str, workspace_id: str, ttl_days: float | None = None) -> Workspace:
        """Renew an ephemeral workspace's TTL from now (by `ttl_days`, else its own TTL)."""
        workspace = self.get(owner, workspace_id)
        if not workspace.ephemeral:
            raise Conflict(f"workspace {workspace.id} is persistent and never expires: there is nothing to extend")
        ttl = ttl_days or workspace.ttl_days or self.settings.default_ttl_days
        return self.store.update(workspace.id, "extended", ttl_days=ttl, expires_at=utcnow() + timedelta(days=ttl))

    # Background work (see lifecycle.py)

    def reap_expired(self) -> int:
        """Destroy ephemeral workspaces whose TTL has passed; return how many."""
        reaped = 0
        for workspace in self.store.expired(utcnow()):
            gone = self.store.transition(
                workspace.id, LIVE, "expired", status=Status.DELETED.value, deleted_at=utcnow()
            )
            if gone is None:
                continue  # deleted meanwhile
            reaped += 1
            self.metrics.expiries.inc()
            log.info("workspace %s of %s expired (TTL %s days)", workspace.id, workspace.owner, workspace.ttl_days)
            if workspace.provider_ref:
                try:
                    self._provider(workspace.provider).destroy(workspace.provider_ref)
                except ProviderError as exc:
                    # Its row is gone, so the next reconciliation removes it as an orphan.
                    log.warning("removing expired workspace %s failed: %s", workspace.id, exc.detail)
        if reaped:
            self.fence()
            self.on_change()
        return reaped

    def reconcile(self, startup: bool = False) -> None:
        """Make the database and the providers agree.

        - a sandbox with no live record is destroyed (an orphan of a crash or a failed delete);
        - a running or stopped record whose sandbox vanished is marked failed (its data went
          with it; handing out an empty sandbox under the old id would hide that);
        - a running record whose sandbox stopped (an engine restart) is marked stopped;
        - at start-up only: records still `starting` are from requests that died with the
          server (their callers never got an id), so they and their sandboxes are removed;
          pooled ones that are not running are discarded.
        """
        held: dict[str, tuple[Provider, str, ProviderState]] = {}
        for provider in {id(p): p for p in self.providers.values()}.values():
            for workspace_id, (ref, state) in provider.inventory().items():
                held[workspace_id] = (provider, ref, state)
        # Listed after the sandboxes: a record is always written before its sandbox is made.
        records = {w.id: w for w in self.store.find(statuses=[*LIVE, Status.POOLED.value])}

        for workspace_id, (provider, ref, _) in held.items():
            record = records.get(workspace_id)
            if record is None or (startup and record.status == Status.STARTING):
                log.warning("removing orphan workspace sandbox %s (no live record)", ref)
                provider.destroy(ref)
        for record in records.values():
            state = held[record.id][2] if record.id in held else "missing"
            if record.status == Status.STARTING:
                if startup:
                    self.store.transition(
                        record.id,
                        ACTIVE,
                        "abandoned",
                        status=Status.DELETED.value,
                        error="the server stopped while this workspace was being created",
                        deleted_at=utcnow(),
                    )
            elif record.status == Status.POOLED:
                booting = not record.provider_ref
                stale = self.pool is None or not self.pool.fits(record)
                if stale or (startup and booting) or (not booting and state != "running"):
                    discard_pooled(self.store, self._provider(record.provider), record)
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
            elif state == "running" and record.status == Status.RUNNING and record.provider_ref:
                # Providers whose sandboxes end by themselves (E2B) keep them until their TTL.
                held[record.id][0].keep(record.provider_ref, record.expires_at)
        self.fence(force=True)
        self.on_change()

    # Network

    def network_columns(self, policy: NetworkPolicy) -> dict[str, object]:
        """The `network` and `allow` columns of a workspace with `policy`."""
        if policy == "none":
            return {"network": NO_NETWORK, "allow": None}
        if isinstance(policy, AllowList):
            if self.firewall is None:
                raise BadRequest(
                    "network.allow needs the workspace network and its firewall: the server must be run with "
                    'WORKSPACE_NETWORK_NAME set; ask for "egress" or "none" instead'
                )
            return {"network": self.settings.network_name, "allow": list(policy.allow)}
        return {"network": self.settings.network_name, "allow": None}

    def _resolve(self, allow: object) -> list[str] | None:
        if not isinstance(allow, list):
            return None
        assert self.firewall is not None  # network_columns refuses allow lists without it
        return self.firewall.resolve(allow)

    def _before_create(self, workspace: Workspace) -> None:
        """Open the firewall for a workspace about to be made (its MAC address is known already)."""
        if workspace.allow is not None and workspace.allow_cidrs is None:  # a pool boot
            workspace.allow_cidrs = self._resolve(workspace.allow)
            self.store.update(workspace.id, allow_cidrs=workspace.allow_cidrs)
        self.fence()

    def fence(self, force: bool = False) -> None:
        """Bring the firewall in line with the workspaces on the network (`force`: rewrite and re-hook it anyway)."""
        if self.firewall is None:
            return
        self.firewall.sync(self._grants, force)

    def _grants(self) -> Grants:
        return {
            mac_address(w.id): w.allow_cidrs if w.allow is not None else None
            for w in self.store.find(statuses=[*LIVE, Status.POOLED.value])
            if w.network == self.settings.network_name
        }

    # Repositories

    def git_push(self, owner: str, workspace_id: str) -> tuple[Workspace, str, str]:
        """Push the current branch of the workspace's repository; (workspace, branch, commit)."""
        workspace = self._running(owner, workspace_id)
        if workspace.repo is None:
            raise Conflict(f"workspace {workspace.id} was not created with a repository (`repo` at create)")
        if self.github is None:
            raise BadRequest("GitHub Apps are not configured on this server (GITHUB_APP_ENCRYPTION_KEY)")
        branch, commit = self.github.push(
            owner, workspace.repo, self._provider(workspace.provider), self._ref(workspace)
        )
        self.store.record(workspace.id, "pushed", branch=branch, commit=commit)
        return workspace, branch, commit

    # Commands and files

    def exec(self, owner: str, workspace_id: str, command: Command) -> ExecResult:
        provider, ref, request = self._exec_target(owner, workspace_id, command)
        return provider.exec(ref, request)

    def exec_stream(self, owner: str, workspace_id: str, command: Command) -> Iterator[ExecEvent]:
        provider, ref, request = self._exec_target(owner, workspace_id, command)
        return provider.exec_stream(ref, request)

    def stat(self, owner: str, workspace_id: str, path: str) -> FileStat | list[DirEntry]:
        provider, ref = self._target(owner, workspace_id)
        return provider.stat(ref, path)

    def read_file(self, owner: str, workspace_id: str, path: str) -> tuple[FileStat, Iterator[bytes]]:
        provider, ref = self._target(owner, workspace_id)
        return provider.read_file(ref, path)

    def write_file(
        self, owner: str, workspace_id: str, path: str, data: Iterable[bytes], size: int, mode: int = 0o644
    ) -> int:
        provider, ref = self._target(owner, workspace_id)
        return provider.write_file(ref, path, data, size, mode)

    def read_archive(self, owner: str, workspace_id: str, path: str) -> Iterator[bytes]:
        provider, ref = self._archive_target(owner, workspace_id)
        return provider.read_archive(ref, path)

    def write_archive(self, owner: str, workspace_id: str, path: str, data: Iterable[bytes]) -> None:
        provider, ref = self._archive_target(owner, workspace_id)
        provider.write_archive(ref, path, data)

    # Helpers

    def _provider(self, name: str) -> Provider:
        if name in self.providers:
            return self.providers[name]
        if name in self.unavailable:
            raise BadRequest(f"provider {name!r} is not available: {self.unavailable[name]}")
        raise BadRequest(f"unknown provider {name!r}: use one of {', '.join(sorted(self.providers))}")

    def _target(self, owner: str, workspace_id: str) -> tuple[Provider, str]:
        """The provider and handle of a running workspace of `owner`."""
        workspace = self._running(owner, workspace_id)
        return self._provider(workspace.provider), self._ref(workspace)

    def _archive_target(self, owner: str, workspace_id: str) -> tuple[Provider, str]:
        provider, ref = self._target(owner, workspace_id)
        if not provider.capabilities().archives:
            raise BadRequest("this workspace's provider cannot move tar archives: use the files endpoint per file")
        return provider, ref

    def _running(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.get(owner, workspace_id)
        self._require(workspace, Status.RUNNING, "use")
        return workspace

    def _exec_target(self, owner: str, workspace_id: str, command: Command) -> tuple[Provider, str, ExecRequest]:
        workspace = self._running(owner, workspace_id)
        request = ExecRequest(
            argv=command.argv,
            cwd=command.cwd,
            env={**workspace.env, **command.env},  # the workspace's env, then the command's own
            timeout=command.timeout or self.settings.exec_timeout,
            output_limit=self.settings.exec_output_limit,
        )
        return self._provider(workspace.provider), self._ref(workspace), request

    def _check_room(self) -> None:
        """Refuse when the cap is reached; the caller holds the store's admission lock."""
        active = self.store.count_active()
        if active >= self.settings.max_concurrent:
            self.metrics.rejections.inc()
            raise TooManyWorkspaces(
                f"{active} workspaces are active, the limit (WORKSPACE_MAX_CONCURRENT) is "
                f"{self.settings.max_concurrent}: stop or delete one, or try again later"
            )

    @staticmethod
    def _require(workspace: Workspace, status: Status, action: str) -> None:
        if workspace.status != status:
            hint = {
                Status.STOPPED: f"start it first with POST /api/v1/workspaces/{workspace.id}/start",
                Status.STARTING: "wait until it is running",
                Status.FAILED: f"it failed ({workspace.error}); delete it and create a new one",
            }.get(Status(workspace.status), "")
            raise Conflict(f"cannot {action} workspace {workspace.id}: it is {workspace.status}; {hint}".rstrip("; "))

    @staticmethod
    def _ref(workspace: Workspace) -> str:
        if not workspace.provider_ref:
            raise Conflict(f"workspace {workspace.id} has no sandbox yet: wait until it is running")
        return workspace.provider_ref
