"""Snapshots and forks of workspaces: an owner's named states, and workspaces made from them.

A snapshot is a row (models.Snapshot) and what its provider keeps (`Provider.snapshot`: for Docker, a copy of
the workspace's disk). It outlives its source workspace; workspaces made from it take its spec as their
defaults (image, sizes, network) and its files (`WorkspaceSpec.snapshot`). A fork is a snapshot and `count`
workspaces made from it side by side, each succeeding or failing on its own.

Blocking, like the manager: called in worker threads.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentbox.db.models import Snapshot, Status, Workspace, new_snapshot_id
from agentbox.egress.rules import Policy
from agentbox.errors import AgentboxError, BadRequest, Conflict, NotFound, TooManyWorkspaces, reason_of
from agentbox.wire.domain import NewWorkspace, Quota
from agentbox.wire.network import NetworkPolicy, policy_json, policy_of

if TYPE_CHECKING:
    from agentbox.workspaces.manager import WorkspaceManager

log = logging.getLogger("agentbox.workspaces.snapshots")
#: Workspaces of one fork made at once (each is an engine create and a disk copy).
FORK_PARALLEL = 8


@dataclass(frozen=True)
class ForkMember:
    """One workspace of a fork: made (`workspace`), or not (`error`, with the status it would have answered)."""

    workspace: Workspace | None = None
    error: str | None = None
    status_code: int | None = None


@dataclass(frozen=True)
class Fork:
    snapshot: Snapshot
    kept: bool  # the snapshot is kept (listed, counted); else it was deleted once the workspaces were made
    members: list[ForkMember]


class Snapshots:
    def __init__(self, manager: WorkspaceManager) -> None:
        self.manager = manager
        self.store = manager.store

    def take(self, owner: str, workspace_id: str, name: str | None = None, memory: bool = True) -> Snapshot:
        """Snapshot the owner's workspace (running or stopped), which goes on as it was. 404 for another
        owner's, 400 when its provider cannot, 409 for a name the owner holds, 429 past WORKSPACE_MAX_SNAPSHOTS."""
        workspace = self.manager.get(owner, workspace_id)
        if workspace.status not in (Status.RUNNING.value, Status.STOPPED.value):
            self.manager._require(workspace, Status.RUNNING, "snapshot")
        provider = self.manager._provider(workspace.provider)
        if not provider.capabilities().snapshots:
            raise BadRequest(
                f"the {workspace.provider} provider cannot snapshot workspaces (GET /api/v1/providers: "
                "capabilities.snapshots): use a workspace of the gvisor or docker provider"
            )
        if name is not None:
            self._name_free(owner, name)
        self._quota(owner)
        if workspace.status == Status.RUNNING.value:
            workspace = self.manager.look(owner, workspace_id).workspace  # awake, so its sandbox can sync
        snapshot_id = new_snapshot_id()
        taken = provider.snapshot(self.manager._ref(workspace), snapshot_id, memory)
        row = Snapshot(
            id=snapshot_id,
            owner=owner,
            name=name,
            workspace_id=workspace.id,
            provider=workspace.provider,
            provider_ref=taken.ref,
            spec=spec_of(workspace),
            memory_kept=taken.memory_kept,
            size=taken.size,
        )
        try:
            with self.store.admission():  # the quota counted and the row added under one lock
                self._quota(owner)
                with self.store.session() as session:
                    session.add(row)
        except BaseException as exc:
            provider.delete_snapshot(taken.ref)
            if isinstance(exc, IntegrityError):
                raise Conflict(f"you have a snapshot named {name!r} already: choose another name") from None
            raise
        self.store.record(workspace.id, "snapshotted", snapshot=snapshot_id, memory_kept=taken.memory_kept)
        return row

    def find(
        self,
        owner: str,
        workspace_id: str | None = None,
        name: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Snapshot]:
        """The owner's snapshots, newest first, at most `limit`, those older than the snapshot `before`."""
        query = select(Snapshot).where(Snapshot.owner == owner)
        if workspace_id is not None:
            query = query.where(Snapshot.workspace_id == workspace_id)
        if name is not None:
            query = query.where(Snapshot.name == name)
        with self.store.session() as session:
            if before is not None:
                cursor = session.get(Snapshot, before)
                if cursor is None or cursor.owner != owner:
                    raise NotFound(f"no snapshot {before!r} to page from: use the `next_before` of the last page")
                query = query.where(
                    (Snapshot.created_at < cursor.created_at)
                    | ((Snapshot.created_at == cursor.created_at) & (Snapshot.id < cursor.id))
                )
            query = query.order_by(Snapshot.created_at.desc(), Snapshot.id.desc()).limit(limit)
            return list(session.scalars(query))

    def get(self, owner: str, ref: str) -> Snapshot:
        """The owner's snapshot by id or name; 404 otherwise (another owner's too)."""
        with self.store.session() as session:
            found = session.get(Snapshot, ref) if ref.startswith("snap-") else None
            if found is None:
                found = session.scalars(select(Snapshot).where(Snapshot.owner == owner, Snapshot.name == ref)).first()
        if found is None or found.owner != owner:
            raise NotFound(f"no snapshot {ref!r}: list yours with GET /api/v1/snapshots")
        return found

    def delete(self, owner: str, ref: str) -> None:
        """Delete the snapshot and what its provider keeps. Workspaces made from it are not touched."""
        snapshot = self.get(owner, ref)
        with self.store.session() as session:
            row = session.get(Snapshot, snapshot.id)
            if row is None:
                raise NotFound(f"no snapshot {ref!r}: it was deleted meanwhile")
            session.delete(row)
        provider = self.manager.providers.get(snapshot.provider)
        if provider is not None:
            provider.delete_snapshot(snapshot.provider_ref)
        else:
            log.warning("snapshot %s of provider %s (not configured) left where it is", snapshot.id, snapshot.provider)

    def fork(
        self,
        owner: str,
        workspace_id: str,
        count: int,
        quota: Quota | None = None,
        keep_snapshot: bool = False,
        like: NewWorkspace | None = None,
    ) -> Fork:
        """A snapshot of the workspace, then `count` workspaces from it, side by side; each is made or fails on its
        own. The snapshot is deleted afterwards unless `keep_snapshot`. `like`: what each is made as (E2B's forks
        get a fixed end), its snapshot filled in; None: with the source's lifetime."""
        if not 1 <= count <= 100:
            raise BadRequest("count: from 1 to 100 workspaces")
        snapshot = self.take(owner, workspace_id)
        source = self.manager.get(owner, workspace_id)
        if like is not None:
            request = dataclasses.replace(like, snapshot=snapshot.id)
        else:
            request = NewWorkspace(snapshot=snapshot.id, ephemeral=source.ephemeral, ttl_days=source.ttl_days)

        def one(_: int) -> ForkMember:
            try:
                return ForkMember(workspace=self.manager.create(owner, request, quota))
            except AgentboxError as exc:
                return ForkMember(error=exc.detail, status_code=exc.status_code)
            except Exception as exc:  # one member's surprise must not lose the others' answers
                log.exception("a fork member of %s failed", workspace_id)
                return ForkMember(error=reason_of(exc), status_code=500)

        try:
            with ThreadPoolExecutor(max_workers=min(count, FORK_PARALLEL), thread_name_prefix="agentbox-fork") as pool:
                members = list(pool.map(one, range(count)))
        finally:
            if not keep_snapshot:
                self.delete(owner, snapshot.id)
        return Fork(snapshot=snapshot, kept=keep_snapshot, members=members)

    def applied(self, owner: str, request: NewWorkspace) -> tuple[NewWorkspace, Snapshot | None]:
        """`request` with the defaults of the snapshot it names (404 for none of the owner's), and that snapshot."""
        if request.snapshot is None:
            return request, None
        snapshot = self.get(owner, request.snapshot)
        if request.provider is not None and request.provider != snapshot.provider:
            raise BadRequest(
                f"provider: snapshot {snapshot.id} is of the {snapshot.provider} provider; leave `provider` out"
            )
        spec = snapshot.spec
        disk = request.disk if request.disk is not None else spec["disk"]
        if disk < spec["disk"]:
            raise BadRequest(f"disk: a workspace from snapshot {snapshot.id} needs at least its disk, {spec['disk']} B")
        filled = dataclasses.replace(
            request,
            provider=snapshot.provider,
            image=request.image or spec["image"],
            cpu=request.cpu or spec["cpu"],
            memory=request.memory or spec["memory"],
            disk=disk,
            network=request.network if request.network is not None else network_of(spec["network"]),
            snapshot=snapshot.id,
        )
        return filled, snapshot

    def _name_free(self, owner: str, name: str) -> None:
        with self.store.session() as session:
            if session.scalars(select(Snapshot.id).where(Snapshot.owner == owner, Snapshot.name == name)).first():
                raise Conflict(f"you have a snapshot named {name!r} already: choose another name, or delete that one")

    def _quota(self, owner: str) -> None:
        limit = self.manager.settings.max_snapshots
        with self.store.session() as session:
            held = session.scalar(select(func.count()).select_from(Snapshot).where(Snapshot.owner == owner)) or 0
        if held >= limit:
            raise TooManyWorkspaces(
                f"you have {held} snapshots, the limit (WORKSPACE_MAX_SNAPSHOTS) is {limit}: delete one "
                "(DELETE /api/v1/snapshots/{id}) first"
            )


def spec_of(workspace: Workspace) -> dict[str, Any]:
    """What a workspace made from a snapshot of `workspace` gets unless its create says otherwise."""
    policy = policy_of(workspace.network, workspace.egress, workspace.allow)
    return {
        "image": workspace.image,
        "cpu": workspace.cpu,
        "memory": workspace.memory,
        "disk": workspace.disk,
        "pids_limit": workspace.pids_limit,
        "network": policy_json(policy) if isinstance(policy, Policy) else policy,
    }


def network_of(stored: str | dict[str, Any]) -> NetworkPolicy:
    if isinstance(stored, str):
        return "none" if stored == "none" else "egress"
    return Policy.model_validate(stored)
