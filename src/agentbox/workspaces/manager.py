"""Workspace lifecycle: ownership, admission, persistence, and which provider does the work.

The manager is the only place that combines the store and the providers; it never knows
how a provider runs things. All methods block (database and engine calls) and are meant
to run in worker threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from agentbox.config import Settings
from agentbox.db.models import Status, Template, Workspace, new_workspace_id, utcnow
from agentbox.db.store import LIVE, Store
from agentbox.egress.rules import Policy
from agentbox.errors import (
    AgentboxError,
    BadRequest,
    Conflict,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    Unprocessable,
    WorkspaceGone,
    reason_of,
)
from agentbox.github.service import GitHub
from agentbox.providers.base import Provider, Resources, Usage, WorkspaceSpec, distinct
from agentbox.wire.domain import NewWorkspace, Quota
from agentbox.wire.network import NO_NETWORK, NetworkPolicy, columns_of, kind_of, policy_of
from agentbox.workspaces.activity import Activity, HeldRuntime
from agentbox.workspaces.admission import Admission
from agentbox.workspaces.audit import AuditLog
from agentbox.workspaces.handle import WorkspaceHandle
from agentbox.workspaces.idle import IdleSuspender
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.pool import WarmPool
from agentbox.workspaces.session_claims import SessionClaims
from agentbox.workspaces.sessions import ShellSessions
from agentbox.workspaces.snapshots import Snapshots
from agentbox.workspaces.template_pools import TemplatePools
from agentbox.workspaces.templates import Templates
from agentbox.workspaces.volumes import Volumes
from agentbox.workspaces.watchers import Watchers

log = logging.getLogger("agentbox.workspaces.manager")
#: How often a workspace's use is written down (and its expiry slid): at most once in this long.
USE_RECORDED_EVERY = timedelta(seconds=60)


class WorkspaceManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: Mapping[str, Provider],
        unavailable: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        github: GitHub | None = None,
        pool: WarmPool | None = None,
    ) -> None:
        """`unavailable`: providers that exist but cannot be used here, with the reason and the fix;
        `pool`: the warm pool creates claim from (the background loop fills it)."""
        self.settings = settings
        self.github = github
        self.store = store
        self.providers = dict(providers)
        self.unavailable = dict(unavailable or {})
        self.metrics = metrics or Metrics()
        self.pool = pool
        self.sessions = ShellSessions(SessionClaims(store, settings.replica_id))
        self.watchers = Watchers(store)
        self.audit = AuditLog(store)
        self.admission = Admission(store, settings.max_concurrent, self.metrics)
        self.activity = Activity(store.touch)
        self.idle = IdleSuspender(store, self.providers, settings, self.metrics)
        self.volumes = Volumes(settings, store, self.providers)
        self.snapshots = Snapshots(self)
        self.templates = Templates(self)
        self.template_pools = TemplatePools(self)
        #: The names of an owner's secrets (the vault's), to check the header rules of a policy against; None:
        #: this server keeps no secrets, and a policy that names one is refused.
        self.secret_names: Callable[[str], set[str]] | None = None
        #: Called when the pool may need refilling or shrinking (set by the lifecycle loop).
        self.on_change: Callable[[], None] = lambda: None
        self.metrics.observe(store.count_active, self.pool.ready if self.pool else lambda: 0, store.count_running)

    # Lifecycle

    def create(self, owner: str, request: NewWorkspace, quota: Quota | None = None) -> Workspace:
        """A running workspace of `owner`, with the repository asked for checked out in it.

        `quota`: the asking key's limits on the owner's active workspaces (429 naming the one reached)."""
        if request.repo is None:
            return self._create(owner, request, quota)
        if self.github is None:
            raise BadRequest("repo: GitHub Apps are not configured on this server (GITHUB_APP_ENCRYPTION_KEY)")
        app = self.github.choose(owner, request.repo)  # a missing App is a 400 before anything is made
        workspace = self._create(owner, request, quota)
        try:
            runtime = self._provider(workspace.provider).runtime(self._ref(workspace))
            repo = self.github.checkout(app, request.repo, runtime)
        except BaseException as exc:
            self.metrics.failures.labels("checkout").inc()
            self._provider(workspace.provider).destroy(self._ref(workspace))
            self.store.retire(workspace.id, "checkout_failed", reason_of(exc))
            self.on_change()
            raise
        return self.store.update(workspace.id, "checked_out", repo=repo)

    def _create(self, owner: str, request: NewWorkspace, quota: Quota | None) -> Workspace:
        started = time.monotonic()
        request, template = self.templates.applied(owner, request)  # its image; made ready below
        request, snapshot = self.snapshots.applied(owner, request)  # a snapshot's spec as the defaults
        provider_name = request.provider or self.settings.default_provider
        provider = self._provider(provider_name)
        capabilities = provider.capabilities()
        if template is not None and not capabilities.templates:
            raise BadRequest(
                f"template: a {provider_name} workspace cannot run a template's image: use the gvisor or docker "
                "provider"
            )
        asked = [name for name in ("cpu", "memory", "disk") if getattr(request, name) is not None]
        if asked and not capabilities.sized_per_request:
            raise BadRequest(
                f"{', '.join(asked)}: a {provider_name} workspace gets them from its template, not per request; "
                "choose a template (`image`) built with the sizes you need"
            )
        now = utcnow()
        ttl_days = (request.ttl_days or self.settings.default_ttl_days) if request.ephemeral else None
        expires_at = now + timedelta(days=ttl_days) if ttl_days is not None else None
        if request.deadline_seconds is not None:  # a fixed end: no TTL to slide
            ttl_days, expires_at = None, now + timedelta(seconds=request.deadline_seconds)
        policy = request.network if request.network is not None else self.settings.network_policy
        policy = self._checked_policy(owner, provider, provider_name, policy)
        network = columns_of(policy, self.settings.network_name)
        idle_timeout = self.settings.idle_timeout if request.idle_timeout is None else request.idle_timeout
        if not capabilities.suspend:
            if request.idle_timeout:
                raise BadRequest(
                    f"idle_timeout: a {provider_name} workspace cannot be suspended here; leave it out, or 0"
                )
            idle_timeout = 0.0
        claim = {
            "owner": owner,
            "ephemeral": request.ephemeral,
            "ttl_days": ttl_days,
            "env": dict(request.env),
            "labels": dict(request.labels),
            "public_ports": request.public_ports,
            "request_host": request.request_host,
            "pause_at_end": None
            if request.pause_at_end is None
            else asdict(request.pause_at_end) | {"seconds": request.deadline_seconds},
            "created_at": now,
            "expires_at": expires_at,
            "idle_timeout": idle_timeout,
            "active_at": now,
        }
        mounts = None
        if request.volumes:  # a pooled workspace has none: a cold create
            if not capabilities.volumes:
                raise BadRequest(
                    f"volumes: a {provider_name} workspace cannot mount volumes; use the gvisor or docker provider"
                )
            mounts = self.volumes.resolve(owner, request.volumes)
        pool = self.pool if self.pool is not None and self.pool.serves(provider_name, request, network) else None
        if template is not None:  # its own pool, if it has one, whose workspaces passed its ready command
            own = self.template_pools.pool(template)
            pool = own if own is not None and own.serves(provider_name, request, network) else None
        pool = None if mounts else pool
        pool = None if snapshot is not None else pool
        # Resolved before admission, not under it: a name lookup may take seconds. (A pooled
        # workspace has its own; a cold create after an empty pool resolves below.)
        allow_cidrs = None if pool is not None else self._resolve(provider, network["allow"])
        cpu, memory = request.cpu or self.settings.default_cpu, request.memory or self.settings.default_memory
        with self.store.admission():
            self.admission.check(owner, quota, cpu, memory)
            self.volumes.check_present(owner, mounts or ())
            claimed = pool.take(status=Status.RUNNING.value, **claim) if pool is not None else None
            if claimed is None:
                workspace = Workspace(
                    id=new_workspace_id(),
                    provider=provider_name,
                    runtime=capabilities.runtime,
                    status=Status.STARTING.value,
                    image=request.image or self.settings.image,
                    cpu=cpu,
                    memory=memory,
                    disk=request.disk or self.settings.default_disk,
                    pids_limit=self.settings.pids_limit,
                    allow_cidrs=allow_cidrs,
                    updated_at=now,
                    replica=self.settings.replica_id,
                    volumes=mounts,
                    snapshot_id=snapshot.id if snapshot is not None else None,
                    **network,
                    **claim,
                )
                self.store.add(workspace, "created", image=workspace.image)
        if claimed is not None:  # woken out of the lock: a burst of claims wakes its workspaces side by side
            self.on_change()
            return self._handed_out("pool", self._awake(claimed, {}), started)
        self.on_change()  # a cold start may leave the pool too big for the cap
        try:
            if workspace.allow is not None and workspace.allow_cidrs is None:  # the pool was empty
                workspace.allow_cidrs = self._resolve(provider, workspace.allow)
                self.store.update(workspace.id, allow_cidrs=workspace.allow_cidrs)
            spec = WorkspaceSpec.of(workspace)
            if snapshot is not None:
                memory = snapshot.memory_kept and spec.network == "none"
                spec = dataclasses.replace(spec, snapshot=snapshot.provider_ref, from_memory=memory)
            ref = provider.create(spec)
        except BaseException as exc:
            # The caller gets the error and no id: hide the row, keep its story in the events.
            self.metrics.failures.labels("create").inc()
            self.store.retire(workspace.id, "create_failed", reason_of(exc))
            raise
        actual = vars(provider.resources(ref) or Resources())
        sizes = {name: value for name, value in actual.items() if value is not None}
        fields = {"status": Status.RUNNING.value, "provider_ref": ref, "active_at": utcnow(), **sizes}
        created = self.store.transition(workspace.id, (Status.STARTING.value,), "started", **fields)
        if created is None:  # deleted meanwhile, or given up by the leader (replicas.py): it must not come back
            provider.destroy(ref)
            self.metrics.failures.labels("create").inc()
            raise Conflict(
                f"workspace {workspace.id} was removed while it was being made (deleted, or given up because this "
                "server lost touch with the database for too long): create it again"
            )
        if template is not None or snapshot is not None:
            self._template_ready(owner, created, template)
        return self._handed_out("cold", created, started)

    def _template_ready(self, owner: str, workspace: Workspace, template: Template | None) -> None:
        """Its template's start command started and its ready command passed (`template`, or the template of its
        image when it was made from a snapshot, unless the command still runs there); else it is removed."""
        if template is not None and not (template.start_cmd or template.ready_cmd):
            return
        try:
            handle = self.use(owner, workspace.id)
            if template is not None:
                self.templates.make_ready(handle, template)
            else:
                self.templates.after_boot(owner, handle, workspace.image, "it was removed")
        except BaseException:
            self.metrics.failures.labels("create").inc()
            with contextlib.suppress(AgentboxError):
                self.delete(owner, workspace.id)
            raise

    def _checked_policy(
        self, owner: str, provider: Provider, provider_name: str, policy: NetworkPolicy
    ) -> NetworkPolicy:
        """`policy` with its GitHub grants' git hosts filled in from their Apps; a 400 for a policy the provider
        cannot enforce or never lets a workspace reach, a 422 naming the secrets its header rules name that the
        owner has none of, or a grant's App that is not the owner's."""
        capabilities = provider.capabilities()
        if kind_of(policy) not in capabilities.network_policies:
            enforced = ", ".join(sorted(capabilities.network_policies))
            raise BadRequest(
                f"network {kind_of(policy)!r}: the {provider_name} provider cannot enforce it (it can: {enforced}); "
                + (capabilities.network_hint or "ask for one of those, or use another provider")
            )
        if not isinstance(policy, Policy):
            return policy
        provider.check_policy(policy)
        if policy.github:
            policy = self._with_git_hosts(owner, policy)
        wanted = policy.secret_names()
        if wanted:
            have = self.secret_names(owner) if self.secret_names is not None else set()
            missing = sorted(name for name in wanted if name not in have and name.lower() not in have)
            if missing:
                raise Unprocessable(
                    f"network.headers: no secret {', '.join(map(repr, missing))} of yours: set it with PUT "
                    f"/api/v1/secrets/NAME (`agentbox secrets set NAME`) first"
                    + (
                        ""
                        if self.secret_names is not None
                        else " (this server keeps no secrets: GITHUB_APP_ENCRYPTION_KEY)"
                    )
                )
        return policy

    def _with_git_hosts(self, owner: str, policy: Policy) -> Policy:
        """`policy` with each GitHub grant's host and port those of its App's git server: never the caller's,
        since the App's token goes there."""
        if self.github is None:
            raise Unprocessable("network.github: this server has no GitHub Apps (GITHUB_APP_ENCRYPTION_KEY)")
        grants = []
        for index, grant in enumerate(policy.github):
            try:
                app = self.github.app(owner, grant.app)
            except NotFound as exc:
                raise Unprocessable(f"network.github[{index}].app: {exc.detail}") from None
            host, port = self.github.git_host(app, f"network.github[{index}]")
            grants.append(grant.model_copy(update={"host": host, "port": port}))
        return policy.model_copy(update={"github": grants})

    def set_network(self, owner: str, workspace_id: str, policy: NetworkPolicy) -> Workspace:
        """Change a workspace's network policy; a running one's new connections obey it on return."""
        workspace = self.get(owner, workspace_id)
        current = policy_of(workspace.network, workspace.egress, workspace.allow)
        if (policy == "none") != (current == "none"):
            raise Conflict(
                f"workspace {workspace.id} {'has no network' if current == 'none' else 'has a network'}: going "
                f'{"to" if policy == "none" else "from"} "none" needs a new network interface; create a new '
                "workspace with the policy instead"
            )
        if policy == current:
            return workspace
        provider = self._provider(workspace.provider)
        capabilities = provider.capabilities()
        if not capabilities.egress_by_name:
            raise BadRequest(
                f"the {workspace.provider} provider cannot change a workspace's network while it exists: create a new "
                "workspace with the policy instead"
            )
        policy = self._checked_policy(owner, provider, workspace.provider, policy)
        if workspace.status not in (Status.RUNNING.value, Status.STOPPED.value):
            self._require(workspace, Status.RUNNING, "change the network of")
        if workspace.provider_ref:  # a stopped one's provider keeps it for its next start
            assert policy != "none"
            provider.set_network(workspace.provider_ref, policy)
        columns = columns_of(policy, self.settings.network_name)
        return self.store.update(workspace.id, "network_changed", egress=columns["egress"], allow=columns["allow"])

    def push_network_policies(self) -> None:
        """Hand every policy workspace's policy to its provider (after a server restart: the proxy starts empty),
        before serving: the running ones, and the warm pool's (frozen, claimed without a start). Stopped ones get
        theirs at start. One that fails is logged: its traffic stays refused (its firewall grant, from the
        database, is nothing directly)."""
        for workspace in self.store.find(statuses=[Status.RUNNING.value, Status.POOLED.value]):
            provider = self.providers.get(workspace.provider)
            if provider is None or workspace.egress is None or not workspace.provider_ref:
                continue
            if not provider.capabilities().egress_by_name:
                continue
            try:
                provider.set_network(workspace.provider_ref, Policy.model_validate(workspace.egress))
            except AgentboxError as exc:
                log.warning(
                    "handing the egress policy of workspace %s to its provider failed: %s", workspace.id, exc.detail
                )

    def _handed_out(self, source: str, workspace: Workspace, started: float) -> Workspace:
        self.metrics.creates.labels(source).inc()
        self.metrics.create_seconds.labels(source).observe(time.monotonic() - started)
        return workspace

    def get(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.store.get(workspace_id)
        if workspace is None or workspace.owner != owner or workspace.status == Status.DELETED:
            raise NotFound(f"no workspace {workspace_id!r}: list yours with GET /api/v1/workspaces")
        return workspace

    def lookup(self, workspace_id: str) -> Workspace | None:
        """Any owner's workspace by id, or None: for callers that prove their right some other way
        than by owner (a token bound to the workspace, a public port) and check it themselves."""
        return self.store.get(workspace_id)

    def running(self) -> list[Workspace]:
        """Every owner's running workspaces."""
        return self.store.find(statuses=[Status.RUNNING.value])

    def has_image(self, image: str) -> bool:
        """Whether the default provider can make workspaces from `image`."""
        return self._provider(self.settings.default_provider).has_image(image)

    def active_by_provider(self) -> dict[str, int]:
        """Workspaces starting or running, every owner's, per provider name."""
        return self.store.count_active_by_provider()

    def find(
        self, owner: str, status: Status | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Workspace]:
        statuses = [status.value] if status else list(LIVE)
        found = self.store.find(owner=owner, statuses=statuses)
        wanted = dict(labels or {})
        return [w for w in found if all(w.labels.get(k) == v for k, v in wanted.items())]

    def delete(self, owner: str, workspace_id: str) -> None:
        """Delete the workspace and remove its sandbox.

        A provider that does not answer in time (ProviderUnavailable) goes on removing it in the background
        where it can, and reconciliation removes what is left of a sandbox that no live record names: the
        workspace is deleted all the same (kept live, it would outlast its sandbox as failed, and its disk
        would stay), and ProviderUnavailable (503) says so."""
        workspace = self.get(owner, workspace_id)
        unfinished: ProviderUnavailable | None = None
        if workspace.provider_ref:
            try:
                self._provider(workspace.provider).destroy(workspace.provider_ref)
            except ProviderUnavailable as exc:
                unfinished = exc
        reason = f"its sandbox's removal went on in the background: {unfinished.detail}" if unfinished else None
        self.store.retire(workspace.id, "deleted", reason)
        self._processes_ended(workspace.id)
        self.on_change()
        if unfinished is not None:
            raise ProviderUnavailable(
                f"workspace {workspace.id} is deleted, but its sandbox is not removed yet: {unfinished.detail}. "
                "Nothing is left for you to do (deleting it again answers 404)"
            )

    def stop(self, owner: str, workspace_id: str) -> Workspace:
        return self._halt(self.get(owner, workspace_id), pause=False)

    def pause(self, owner: str, workspace_id: str, keep_memory: bool = True) -> Workspace:
        """Stop it so that `start` resumes it, its memory and processes kept where the provider can and
        `keep_memory` asks (`memory_kept` says). One with a fixed end (E2B's timeout) then has none, as
        E2B's paused sandboxes wait to be resumed (`set_deadline` gives it a new end). A stopped one is
        returned as is."""
        return self._halt(self.get(owner, workspace_id), pause=True, keep_memory=keep_memory)

    def _halt(self, workspace: Workspace, pause: bool, keep_memory: bool = True) -> Workspace:
        if workspace.status == Status.STOPPED:
            return workspace
        self._require(workspace, Status.RUNNING, "pause" if pause else "stop")
        provider = self._provider(workspace.provider)
        if not provider.capabilities().stop_start:
            raise BadRequest(f"a {workspace.provider} workspace cannot be stopped and started: delete it when done")
        # A suspended one is thawed by the provider on the way (a frozen sandbox holds the engine's signals).
        fields: dict[str, object] = {"status": Status.STOPPED.value, "error": None, "suspended_at": None}
        if pause and keep_memory:
            fields["memory_kept"] = provider.pause(self._ref(workspace))
        else:
            provider.stop(self._ref(workspace))
            fields |= {"memory_kept": False} if pause else {}
        if pause and workspace.ephemeral and workspace.ttl_days is None:
            fields |= {"ephemeral": False, "expires_at": None}
        halted = self.store.update(workspace.id, "paused" if pause else "stopped", **fields)
        if not fields.get("memory_kept"):
            self._processes_ended(workspace.id)
        self.on_change()
        return halted

    def _processes_ended(self, workspace_id: str) -> None:
        """Forget the sessions and watchers of a workspace whose processes ended: their PIDs may name
        other processes on its next boot."""
        self.sessions.forget(workspace_id)
        self.watchers.forget(workspace_id)

    def pause_at_end(self, workspace: Workspace) -> Workspace:
        """Pause a workspace made to be paused at its end (`NewWorkspace.pause_at_end`) whose end has come."""
        assert workspace.pause_at_end is not None
        log.info("workspace %s of %s reached its end: paused", workspace.id, workspace.owner)
        return self._halt(workspace, pause=True, keep_memory=bool(workspace.pause_at_end.get("keep_memory")))

    def wake(self, workspace: Workspace) -> Workspace:
        """The workspace as traffic to it finds it (E2B's auto-resume: envd calls, its ports). One made to
        pause at its end and be woken by traffic, paused or past its end, is running again with a new end;
        any other is returned as is."""
        policy = workspace.pause_at_end
        ended = workspace.expires_at is not None and workspace.expires_at <= utcnow()
        if not (policy and policy.get("auto_resume") and (workspace.status == Status.STOPPED or ended)):
            return workspace
        if workspace.status == Status.STOPPED:
            workspace = self.start(workspace.owner, workspace.id)
        seconds = float(policy.get("seconds") or 0)
        return self.set_deadline(workspace.owner, workspace.id, seconds, only_later=True) if seconds else workspace

    def start(self, owner: str, workspace_id: str, restore: bool = True, quota: Quota | None = None) -> Workspace:
        """Start it again; a paused one with its memory, unless `restore` is False (a fresh boot, files kept).

        `quota`: the asking key's limits on the owner's active workspaces."""
        workspace = self.get(owner, workspace_id)
        if workspace.status == Status.RUNNING:
            return workspace
        self._require(workspace, Status.STOPPED, "start")
        with self.store.admission():
            self.admission.check(owner, quota, workspace.cpu, workspace.memory)
            if (
                self.store.transition(
                    workspace.id,
                    (Status.STOPPED.value,),
                    "starting",
                    status=Status.STARTING.value,
                    replica=self.settings.replica_id,
                )
                is None
            ):
                raise Conflict(f"workspace {workspace.id} changed while it was being started: look at it again")
        try:
            provider = self._provider(workspace.provider)
            if not restore:
                provider.discard_memory(self._ref(workspace))
            if workspace.network != NO_NETWORK and provider.capabilities().egress_by_name:
                # Before the start, so that it boots under its stored policy (changed while it was stopped, or
                # unknown to a restarted server's proxy): the provider attaches it once it has its address.
                policy = policy_of(workspace.network, workspace.egress, workspace.allow)
                assert policy != "none"
                provider.set_network(self._ref(workspace), policy)
            provider.start(self._ref(workspace))
        except BaseException as exc:
            self.metrics.failures.labels("start").inc()
            self.store.transition(
                workspace.id,
                (Status.STARTING.value,),
                "start_failed",
                status=Status.STOPPED.value,
                error=reason_of(exc),
            )
            raise
        running = self.store.transition(
            workspace.id,
            (Status.STARTING.value,),
            "started",
            status=Status.RUNNING.value,
            error=None,
            active_at=utcnow(),
        )
        if running is None:  # deleted meanwhile, or given up (and so stopped) by the leader
            raise Conflict(f"workspace {workspace.id} changed while it was being started: look at it again")
        self.templates.after_boot(owner, self.use(owner, workspace.id), running.image, "it is running: look at why")
        return running

    def extend(self, owner: str, workspace_id: str, ttl_days: float | None = None) -> Workspace:
        """Renew an ephemeral workspace's TTL from now (by `ttl_days`, else its own TTL)."""
        workspace = self.get(owner, workspace_id)
        if not workspace.ephemeral:
            raise Conflict(f"workspace {workspace.id} is persistent and never expires: there is nothing to extend")
        ttl = ttl_days or workspace.ttl_days or self.settings.default_ttl_days
        return self.store.update(workspace.id, "extended", ttl_days=ttl, expires_at=utcnow() + timedelta(days=ttl))

    def set_deadline(self, owner: str, workspace_id: str, seconds: float, only_later: bool = False) -> Workspace:
        """End the workspace `seconds` from now, used or not (E2B's `set_timeout`); with `only_later`,
        never earlier than its current end (E2B's `connect`)."""
        workspace = self.get(owner, workspace_id)
        deadline = utcnow() + timedelta(seconds=seconds)
        if only_later and workspace.expires_at is not None and workspace.expires_at > deadline:
            return workspace
        return self.store.update(workspace.id, "deadline_set", ephemeral=True, ttl_days=None, expires_at=deadline)

    # Background work (see background.py)

    def reap_expired(self) -> int:
        """Destroy ephemeral workspaces whose TTL has passed; return how many."""
        reaped = 0
        for workspace in self.store.expired(utcnow()):
            if workspace.pause_at_end is not None and workspace.status == Status.RUNNING:
                try:
                    self.pause_at_end(workspace)
                except AgentboxError as exc:  # changed meanwhile, or the engine is away: the next round
                    log.warning("pausing workspace %s at its end failed: %s", workspace.id, exc.detail)
                continue
            if self.store.retire(workspace.id, "expired", expected=LIVE) is None:
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
            self.on_change()
        # What other ends (reconciliation, failed creates) left of sessions and watchers.
        self.sessions.claims.sweep()
        self.watchers.sweep()
        return reaped

    # Isolation

    def enforce_isolation(self) -> None:
        """Have every provider re-assert what something outside may have undone (a firewall flush)."""
        for provider in distinct(self.providers.values()):
            provider.enforce()

    def _resolve(self, provider: Provider, allow: object) -> list[str] | None:
        return provider.resolve_allow_list(allow) if isinstance(allow, list) else None

    # Repositories

    def git_push(self, owner: str, workspace_id: str) -> tuple[Workspace, str, str]:
        """Push the current branch of the workspace's repository; (workspace, branch, commit)."""
        handle = self.use(owner, workspace_id)
        workspace = handle.workspace
        if workspace.repo is None:
            raise Conflict(f"workspace {workspace.id} was not created with a repository (`repo` at create)")
        if self.github is None:
            raise BadRequest("GitHub Apps are not configured on this server (GITHUB_APP_ENCRYPTION_KEY)")
        branch, commit = self.github.push(owner, workspace.repo, handle.runtime)
        self.store.record(workspace.id, "pushed", branch=branch, commit=commit)
        return workspace, branch, commit

    # Helpers

    def _provider(self, name: str) -> Provider:
        if name in self.providers:
            return self.providers[name]
        if name in self.unavailable:
            raise BadRequest(f"provider {name!r} is not available: {self.unavailable[name]}")
        raise BadRequest(f"unknown provider {name!r}: use one of {', '.join(sorted(self.providers))}")

    def measure(self) -> dict[str, Usage]:
        """What each running workspace (every owner's) uses now, where its provider can say."""
        found = {}
        for workspace in self.running():
            provider = self.providers.get(workspace.provider)
            if provider is None or not workspace.provider_ref:
                continue
            try:
                usage = provider.usage(workspace.provider_ref)
            except WorkspaceGone:  # deleted since it was listed
                continue
            if usage is not None:
                found[workspace.id] = usage
        return found

    # Shell sessions

    # Inside a workspace

    def use(self, owner: str, workspace_id: str) -> WorkspaceHandle:
        """A running workspace of `owner`, to work in, awake (a suspended one is woken first): the use is
        recorded and an ephemeral workspace's expiry slides. NotFound (404) for another owner's, Conflict
        (409) for one not running."""
        return self._handle(self._looked_at(owner, workspace_id, "use"), use=True)

    def look(self, owner: str, workspace_id: str) -> WorkspaceHandle:
        """A running workspace of `owner`, awake, for a look at its state (its processes, its ports): not a
        use, so its expiry stays (a dashboard looks every few seconds, which must not keep an idle workspace
        from expiring); but activity, so it is not suspended under the look. NotFound (404), Conflict (409)
        as `use`."""
        return self._handle(self._looked_at(owner, workspace_id), use=False)

    def _handle(self, workspace: Workspace, use: bool) -> WorkspaceHandle:
        activity = self._activity(workspace, use)
        if workspace.suspended_at is not None:
            workspace = self._awake(workspace, activity)
        elif activity:
            workspace = self.store.update(workspace.id, **activity)
        provider, ref = self._provider(workspace.provider), self._ref(workspace)
        runtime = HeldRuntime(provider.runtime(ref), lambda: self.activity.acquire(workspace.id))
        return WorkspaceHandle(workspace, provider, ref, runtime, self.settings, self.sessions, self.watchers)

    def _looked_at(self, owner: str, workspace_id: str, action: str = "look into") -> Workspace:
        workspace = self.get(owner, workspace_id)
        self._require(workspace, Status.RUNNING, action)
        return workspace

    def _activity(self, workspace: Workspace, use: bool) -> dict[str, Any]:
        """The columns a use (or a look) of `workspace` records now: the activity (what idle suspend counts
        from), and with `use` the use, which slides an ephemeral workspace's expiry to its TTL from now: one
        that is used never expires under its user, an idle one still does. Each at most once in a while
        (USE_RECORDED_EVERY; activity, to a quarter of the idle timeout), so that a command costs no
        database write; a suspended workspace's wake writes them with its own (one write, not two)."""
        now = utcnow()
        fields: dict[str, Any] = {}
        if use and (workspace.last_used_at is None or now - workspace.last_used_at >= USE_RECORDED_EVERY):
            ttl = workspace.ttl_days
            fields |= {
                "last_used_at": now,
                "expires_at": now + timedelta(days=ttl) if ttl is not None else workspace.expires_at,
            }
        idle = self.settings.idle_timeout if workspace.idle_timeout is None else workspace.idle_timeout
        every = min(USE_RECORDED_EVERY, timedelta(seconds=idle / 4)) if idle else USE_RECORDED_EVERY
        if workspace.active_at is None or now - workspace.active_at >= every:
            fields["active_at"] = now
        return fields

    def _awake(self, workspace: Workspace, activity: dict[str, Any]) -> Workspace:
        """`workspace`, its sandbox thawed if it was suspended and `activity` recorded. The mark is cleared
        before the thaw, so that a suspend under way (idle.py) finds it cleared after its freeze and thaws again; of
        concurrent callers, the one that clears it is the wake counted, and each thaws (a thawed sandbox is
        left as is)."""
        if workspace.suspended_at is None:
            return workspace
        started = time.monotonic()
        woken = self.store.mark_awake(workspace.id, {"active_at": utcnow(), **activity})
        try:
            self._provider(workspace.provider).wake(self._ref(workspace))
        except BaseException:
            if woken is not None:  # still frozen, perhaps: the next call wakes it again
                self.store.update(workspace.id, suspended_at=workspace.suspended_at)
            raise
        if woken is None:  # another caller woke it
            fresh = self.store.transition(workspace.id, None, **activity) if activity else self.store.get(workspace.id)
            return fresh or workspace
        self.metrics.wake_seconds.observe(time.monotonic() - started)
        return woken

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
