"""E2B's snapshots and forks (what the SDK's `create_snapshot`, `list_snapshots`, `delete_snapshot` and `fork`
call), served from agentbox's own (workspaces/snapshots.py, /api/v1/snapshots): an E2B snapshot is the owner's
agentbox snapshot, and `Sandbox.create(snapshot_id)` (control.py) makes a sandbox from it.

`snapshotID` is agentbox's snapshot id (`snap-...`); `names` holds its name when it has one (E2B's form,
`team/name:tag`, is read too: agentbox has no teams or tags). Either works as a template. A snapshot keeps the
sandbox's memory where agentbox can (a sandbox without internet, under gVisor's checkpoints; E2B's `memory`
false: files only); the sandbox goes on with its id and expiry. A fork is one snapshot, `count` sandboxes made
from it (each with E2B's fork `timeout`, 15 s unless given), each made or failed on its own; the snapshot is
deleted afterwards. Another owner's sandbox or snapshot is E2B's 404. Errors are E2B's shape (control.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from agentbox.db.models import Snapshot, Workspace
from agentbox.e2b_api.control import PREFIX, SNAPSHOT_ID, E2BError, Manager, Signer, Who, _found, _sandbox
from agentbox.errors import AgentboxError, NotFound
from agentbox.web.dependencies import in_thread
from agentbox.wire.common import MAX_SECONDS
from agentbox.wire.domain import NewWorkspace
from agentbox.wire.snapshots import MAX_FORK
from agentbox.workspaces.snapshots import Fork

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: E2B's default lifetime of a fork (its API's `timeout` default).
FORK_TIMEOUT = 15
#: A snapshot name: agentbox's rule, but `snap-` allowed (E2B's tests name theirs so), not in an id's form.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class NewSnapshot(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(None, max_length=256)
    #: False: the files only (E2B's `mode="filesystem"`); else the memory too where it can be kept.
    memory: bool = True


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timeout: int = Field(FORK_TIMEOUT, ge=0, le=MAX_SECONDS)
    count: int = Field(1, ge=1, le=MAX_FORK)


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return await in_thread(function, *args)
    except AgentboxError as exc:
        raise E2BError(400 if exc.status_code == 422 else exc.status_code, exc.detail) from None


def _shown(snapshot: Snapshot) -> dict[str, Any]:
    return {"snapshotID": snapshot.id, "names": [snapshot.name] if snapshot.name else []}


def _ref(given: str) -> str:
    """A snapshot's id or name from E2B's forms of it: `team/name:tag` read as `name` (no teams or tags here)."""
    return given.rsplit("/", 1)[-1].split(":", 1)[0]


def _name(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    if not _NAME.fullmatch(name):
        raise E2BError(
            400, "name: 1 to 64 letters, digits, '.', '_' or '-', a letter or digit first (e.g. 'my-snapshot')"
        )
    if SNAPSHOT_ID.fullmatch(name):
        raise E2BError(400, "name: has the form of a snapshot id (snap- and 16 hex digits): choose another")
    return name


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(sandbox_id: str, mgr: Manager, who: Who, body: NewSnapshot | None = None) -> dict[str, Any]:
    asked = body or NewSnapshot.model_validate({})
    name = _name(asked.name)
    await _call(_found, mgr, who.owner, sandbox_id)
    snapshot: Snapshot = await _call(mgr.snapshots.take, who.owner, sandbox_id, name, asked.memory)
    return _shown(snapshot)


@router.get("/snapshots")
async def list_snapshots(
    mgr: Manager,
    who: Who,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID", max_length=64)] = None,
    name: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=64)] = None,
) -> Response:
    """The owner's snapshots, newest first; `x-next-token` (the page's last id) pages on."""
    if name:
        ref = _ref(name)

        def named() -> list[Snapshot]:
            try:
                found = mgr.snapshots.get(who.owner, ref)
            except NotFound:
                return []
            return [found] if sandbox_id is None or found.workspace_id == sandbox_id else []

        page: list[Snapshot] = [] if next_token else await _call(named)
    else:
        try:
            page = await in_thread(mgr.snapshots.find, who.owner, sandbox_id, None, limit, next_token)
        except NotFound:
            raise E2BError(
                400, f"nextToken: {next_token!r} names no snapshot of yours: pass the last x-next-token"
            ) from None
    headers = {"x-next-token": page[-1].id} if len(page) == limit else {}
    return JSONResponse([_shown(s) for s in page], headers=headers)


@router.delete("/templates/{template_id}", status_code=204)
async def delete_snapshot(template_id: str, mgr: Manager, who: Who) -> Response:
    """`Sandbox.delete_snapshot`: E2B deletes a snapshot as the template it is. Only snapshots are templates that
    can be deleted here (`base` and images are the server's)."""
    try:
        await in_thread(mgr.snapshots.delete, who.owner, _ref(template_id))
    except NotFound:
        raise E2BError(404, f"snapshot {template_id!r} not found (list yours with Sandbox.list_snapshots())") from None
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork(
    sandbox_id: str, mgr: Manager, who: Who, tokens: Signer, body: ForkRequest | None = None
) -> list[dict[str, Any]]:
    asked = body or ForkRequest.model_validate({})
    source: Workspace = await _call(_found, mgr, who.owner, sandbox_id)
    # What E2B's create would have given each: a fixed end, the source's port rules.
    like = NewWorkspace(
        deadline_seconds=asked.timeout or FORK_TIMEOUT,
        public_ports=source.public_ports,
        request_host=source.request_host,
    )
    made: Fork = await _call(mgr.snapshots.fork, who.owner, sandbox_id, asked.count, who.quota, False, like)
    return [
        {"sandbox": _sandbox(member.workspace, mgr, who, tokens)}
        if member.workspace is not None
        else {"error": {"code": member.status_code or 500, "message": member.error or "the fork failed"}}
        for member in made.members
    ]
