"""Snapshot routes: snapshot a workspace, fork it, and list, get and delete your snapshots. A workspace is made
from a snapshot by the create route (`snapshot` in its body: api/workspaces.py)."""

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from agentbox.api.workspaces import workspace_out
from agentbox.db.models import Snapshot
from agentbox.web.dependencies import Manager, Owner, Who, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.snapshots import (
    CreateSnapshot,
    ForkMemberOut,
    ForkOut,
    ForkWorkspaces,
    SnapshotList,
    SnapshotOut,
)

router = APIRouter(tags=["snapshots"])

_CANNOT = (400, "Its provider cannot snapshot workspaces (E2B): `GET /api/v1/providers` says which can.")
_STATE = (409, "It is neither running nor stopped (starting, failed); or you hold a snapshot of that name.")
_QUOTA = (429, "You hold WORKSPACE_MAX_SNAPSHOTS snapshots already: delete one first.")
#: Why a snapshot of a workspace without memory kept holds files only.
NETWORK_NOTE = (
    "files only: the workspace has a network, and gVisor cannot checkpoint a sandbox that uses the host's network "
    'stack; a workspace created with "network": "none" keeps its memory too'
)
RUNTIME_NOTE = "files only: this server's runtime could not checkpoint the workspace (the server's log says why)"


def snapshot_out(snapshot: Snapshot) -> SnapshotOut:
    note = None
    if not snapshot.memory_kept:
        note = NETWORK_NOTE if snapshot.spec.get("network") != "none" else RUNTIME_NOTE
    spec = {name: snapshot.spec[name] for name in ("image", "cpu", "memory", "disk")}
    fields = {name: getattr(snapshot, name) for name in SnapshotOut.model_fields if hasattr(Snapshot, name)}
    return SnapshotOut.model_validate(fields | spec | {"memory_note": note})


@router.post(
    "/api/v1/workspaces/{workspace_id}/snapshots",
    summary="Snapshot a workspace",
    status_code=201,
    response_model=SnapshotOut,
    responses=errors(_CANNOT, 404, _STATE, 413, 422, _QUOTA, 502, 503),
)
async def create_snapshot(
    workspace_id: str,
    mgr: Manager,
    who: Owner,
    body: Annotated[CreateSnapshot, Body(default_factory=CreateSnapshot)],
) -> SnapshotOut:
    """Take a snapshot of one of your workspaces, running or stopped (201): its files, and its memory and
    processes where the runtime can checkpoint it (`memory_kept`; `memory_note` says why not). A running
    workspace is paused for the copy only, and goes on with its id and expiry.

    Needs an API key: the workspace's owner's; the snapshot is theirs.
    """
    return snapshot_out(await in_thread(mgr.snapshots.take, who, workspace_id, body.name))


@router.post(
    "/api/v1/workspaces/{workspace_id}/fork",
    summary="Fork a workspace",
    response_model=ForkOut,
    responses=errors(_CANNOT, 404, _STATE, 413, 422, _QUOTA, 502, 503),
)
async def fork_workspace(workspace_id: str, body: ForkWorkspaces, mgr: Manager, who: Who) -> ForkOut:
    """Snapshot one of your workspaces and make `count` workspaces from the snapshot, side by side. Each is made
    or fails on its own (its error and the status its own create would have answered); the source goes on
    with its id and expiry. Writes in one never reach another.

    Needs an API key: the workspace's owner's; the new workspaces count against its quotas.
    """
    fork = await in_thread(mgr.snapshots.fork, who.owner, workspace_id, body.count, who.quota, body.keep_snapshot)
    members = [
        ForkMemberOut(
            id=member.workspace.id if member.workspace else None,
            workspace=workspace_out(member.workspace) if member.workspace else None,
            error=member.error,
            status_code=member.status_code,
        )
        for member in fork.members
    ]
    return ForkOut(
        source=workspace_id,
        snapshot=snapshot_out(fork.snapshot),
        snapshot_kept=fork.kept,
        workspaces=members,
        made=sum(1 for member in fork.members if member.workspace is not None),
    )


@router.get(
    "/api/v1/snapshots",
    summary="List your snapshots",
    response_model=SnapshotList,
    responses=errors((404, "`before` names no snapshot of yours."), 422),
)
async def list_snapshots(
    mgr: Manager,
    who: Owner,
    workspace_id: Annotated[str | None, Query(max_length=64, description="only those of this workspace")] = None,
    name: Annotated[str | None, Query(max_length=64, description="only the one of this name")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(max_length=64, description="only those older than this snapshot")] = None,
) -> SnapshotList:
    """Your snapshots, newest first, `limit` at a time (`next_before` pages on).

    Needs an API key: its owner's snapshots are listed.
    """
    found = await in_thread(mgr.snapshots.find, who, workspace_id, name, limit, before)
    return SnapshotList(
        snapshots=[snapshot_out(s) for s in found], next_before=found[-1].id if len(found) == limit else None
    )


@router.get(
    "/api/v1/snapshots/{snapshot}",
    summary="Get a snapshot",
    response_model=SnapshotOut,
    responses=errors((404, "No snapshot of yours with this id or name.")),
)
async def get_snapshot(snapshot: str, mgr: Manager, who: Owner) -> SnapshotOut:
    """One of your snapshots, by id or name.

    Needs an API key: the snapshot's owner's.
    """
    return snapshot_out(await in_thread(mgr.snapshots.get, who, snapshot))


@router.delete(
    "/api/v1/snapshots/{snapshot}",
    summary="Delete a snapshot",
    status_code=204,
    responses=errors((404, "No snapshot of yours with this id or name.")),
)
async def delete_snapshot(snapshot: str, mgr: Manager, who: Owner) -> Response:
    """Delete one of your snapshots and the copy it holds (204). Workspaces made from it are not touched.

    Needs an API key: the snapshot's owner's.
    """
    await in_thread(mgr.snapshots.delete, who, snapshot)
    return Response(status_code=204)
