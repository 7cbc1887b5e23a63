"""Workspace lifecycle: ownership, admission, persistence, and which provider does the work.

The manager is the only place that combines the store and the providers; it never knows
how a provider runs things. All methods block (database and engine calls) and are meant
to run in worker threads.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta

from agentbox.config import Settings
from agentbox.errors import BadRequest, Conflict, NotFound, TooManyWorkspaces
from agentbox.models import Status, Workspace, utcnow
from agentbox.providers.base import (
    DirEntry,
    ExecEvent,
    ExecRequest,
    ExecResult,
    FileStat,
    Provider,
    WorkspaceSpec,
)
from agentbox.schemas import CreateWorkspace, ExecIn
from agentbox.store import Store

log = logging.getLogger("agentbox.manager")


def new_workspace_id() -> str:
    # Also the container's hostname, so only [a-z0-9-].
    return "ws-" + secrets.token_hex(8)


class WorkspaceManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: Mapping[str, Provider],
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = dict(providers)
        # Providers that exist but cannot be used here, with the reason and the fix.
        self.unavailable = dict(unavailable or {})
        # Admission is counted from the database under this lock, so the cap holds across restarts.
        self._admission = threading.Lock()

    # Lifecycle

    def create(self, owner: str, request: CreateWorkspace) -> Workspace:
        provider_name = request.provider or self.settings.default_provider
        provider = self._provider(provider_name)
        now = utcnow()
        ttl_days = (request.ttl_days or self.settings.default_ttl_days) if request.ephemeral else None
        workspace = Workspace(
            id=new_workspace_id(),
            owner=owner,
            provider=provider_name,
            runtime=provider.capabilities().runtime,
            status=Status.STARTING.value,
            image=request.image or self.settings.image,
            cpu=request.cpu or self.settings.default_cpu,
            memory=request.memory or self.settings.default_memory,
            disk=request.disk or self.settings.default_disk,
            pids_limit=self.settings.pids_limit,
            ephemeral=request.ephemeral,
            ttl_days=ttl_days,
            env=dict(request.env),
            labels=dict(request.labels),
            network=self.settings.network_name,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(days=ttl_days) if ttl_days is not None else None,
        )
        self._admit(workspace.id, add=workspace)
        spec = WorkspaceSpec(
            id=workspace.id,
            image=workspace.image,
            cpu=workspace.cpu,
            memory=workspace.memory,
            disk=workspace.disk,
            pids_limit=workspace.pids_limit,
            network=workspace.network,
        )
        try:
            ref = provider.create(spec)
        except BaseException as exc:
            # The caller gets the error and no id: hide the row, keep its story in the events.
            reason = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
            self.store.update(
                workspace.id, "create_failed", status=Status.DELETED.value, error=reason, deleted_at=utcnow()
            )
            raise
        return self.store.update(workspace.id, "started", status=Status.RUNNING.value, provider_ref=ref)

    def get(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.store.get(workspace_id)
        if workspace is None or workspace.owner != owner or workspace.status == Status.DELETED:
            raise NotFound(f"no workspace {workspace_id!r}: list yours with GET /api/v1/workspaces")
        return workspace

    def find(
        self, owner: str, status: Status | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Workspace]:
        statuses = [status.value] if status else [s.value for s in Status if s != Status.DELETED]
        found = self.store.find(owner=owner, statuses=statuses)
        wanted = dict(labels or {})
        return [w for w in found if all(w.labels.get(k) == v for k, v in wanted.items())]

    def delete(self, owner: str, workspace_id: str) -> None:
        workspace = self.get(owner, workspace_id)
        if workspace.provider_ref:
            self._provider(workspace.provider).destroy(workspace.provider_ref)
        self.store.update(workspace.id, "deleted", status=Status.DELETED.value, deleted_at=utcnow())

    def stop(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.get(owner, workspace_id)
        if workspace.status == Status.STOPPED:
            return workspace
        self._require(workspace, Status.RUNNING, "stop")
        self._provider(workspace.provider).stop(self._ref(workspace))
        return self.store.update(workspace.id, "stopped", status=Status.STOPPED.value)

    def start(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.get(owner, workspace_id)
        if workspace.status == Status.RUNNING:
            return workspace
        self._require(workspace, Status.STOPPED, "start")
        self._admit(workspace.id)
        try:
            self._provider(workspace.provider).start(self._ref(workspace))
        except BaseException as exc:
            self.store.update(
                workspace.id, "start_failed", status=Status.STOPPED.value, error=getattr(exc, "detail", str(exc))
            )
            raise
        return self.store.update(workspace.id, "started", status=Status.RUNNING.value, error=None)

    # Commands and files

    def exec(self, owner: str, workspace_id: str, command: ExecIn) -> ExecResult:
        provider, ref, request = self._exec_target(owner, workspace_id, command)
        return provider.exec(ref, request)

    def exec_stream(self, owner: str, workspace_id: str, command: ExecIn) -> Iterator[ExecEvent]:
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
        provider, ref = self._target(owner, workspace_id)
        return provider.read_archive(ref, path)

    def write_archive(self, owner: str, workspace_id: str, path: str, data: Iterable[bytes]) -> None:
        provider, ref = self._target(owner, workspace_id)
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

    def _running(self, owner: str, workspace_id: str) -> Workspace:
        workspace = self.get(owner, workspace_id)
        self._require(workspace, Status.RUNNING, "use")
        return workspace

    def _exec_target(self, owner: str, workspace_id: str, command: ExecIn) -> tuple[Provider, str, ExecRequest]:
        workspace = self._running(owner, workspace_id)
        request = ExecRequest(
            argv=command.argv,
            cwd=command.cwd,
            env={**workspace.env, **command.env},  # the workspace's env, then the command's own
            timeout=command.timeout,
            output_limit=self.settings.exec_output_limit,
        )
        return self._provider(workspace.provider), self._ref(workspace), request

    def _admit(self, workspace_id: str, add: Workspace | None = None) -> None:
        """Count active workspaces and mark this one starting, atomically."""
        with self._admission:
            active = self.store.count_active()
            if active >= self.settings.max_concurrent:
                raise TooManyWorkspaces(
                    f"{active} workspaces are active, the limit (WORKSPACE_MAX_CONCURRENT) is "
                    f"{self.settings.max_concurrent}: stop or delete one, or try again later"
                )
            if add is not None:
                self.store.add(add, "created", image=add.image)
            else:
                self.store.update(workspace_id, "starting", status=Status.STARTING.value)

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
