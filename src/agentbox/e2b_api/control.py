"""E2B's control-plane REST API (what `Sandbox.create`, `list`, `get_info`, `set_timeout`, `connect` and
`kill` call), served by agentbox over its own workspaces.

Served under `/e2b` (the SDK's `E2B_API_URL` is `http(s)://<server>/e2b`). A sandbox is an
agentbox workspace of the caller (`X-API-Key` is an agentbox API key): same owners, limits,
firewall, pool and reaper. E2B's `timeout` is a fixed end, not a sliding TTL: the workspace ends
then, used or not, unless `set_timeout` or `connect` moves it. Metadata is the workspace's labels.
Errors are E2B's shape, `{"code", "message"}`, which the SDK parses before mapping them.

Work in progress (issue 15): envd (commands, files) is not served yet.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from agentbox.api.dependencies import in_thread, owner_of_key
from agentbox.domain import NewWorkspace
from agentbox.errors import AgentboxError, NotFound
from agentbox.manager import WorkspaceManager
from agentbox.models import Status, Workspace
from agentbox.schemas import MAX_SECONDS, Env, LabelValue, MetadataKey

PREFIX = "/e2b"
#: The envd protocol version agentbox answers as (see docs/e2b-wire-protocol.md, "envdVersion").
ENVD_VERSION = "0.5.7"
CLIENT_ID = "agentbox"
#: E2B's default sandbox lifetime when `create` names none.
DEFAULT_TIMEOUT = 300
#: The template that stands for the server's default image.
BASE_TEMPLATE = "base"

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class E2BError(Exception):
    """An error in E2B's shape."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def e2b_error(_request: Request, exc: E2BError) -> JSONResponse:
    # Should-Retry: the SDK would otherwise retry a 502-504 three times before saying anything.
    headers = {"Should-Retry": "false"}
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.code, headers=headers)


async def _manager(request: Request) -> WorkspaceManager:
    found: WorkspaceManager | None = request.app.state.service.manager
    if found is None:
        raise E2BError(404, "agent workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES)")
    return found


async def _owner(request: Request, x_api_key: Annotated[str, Header()] = "") -> str:
    found = owner_of_key(request.app.state.service.settings.owners_by_key, x_api_key)
    if found is None:
        raise E2BError(401, "invalid API key: E2B_API_KEY must be one of the agentbox server's WORKSPACE_API_KEYS")
    return found


Manager = Annotated[WorkspaceManager, Depends(_manager)]
Owner = Annotated[str, Depends(_owner)]


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """A manager call in a worker thread, its errors as E2B's."""
    try:
        return await in_thread(function, *args)
    except AgentboxError as exc:
        raise E2BError(exc.status_code, exc.detail) from None


class Timeout(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    timeout: int = Field(DEFAULT_TIMEOUT, ge=0, le=MAX_SECONDS)


class NewSandbox(Timeout):
    template_id: str = Field(BASE_TEMPLATE, alias="templateID", min_length=1, max_length=512)
    metadata: dict[MetadataKey, LabelValue] = Field(default_factory=dict, max_length=64)
    env_vars: Env = Field(default_factory=dict, alias="envVars")
    allow_internet_access: bool = True


@router.post("/v2/sandboxes", status_code=201)
async def create(body: NewSandbox, mgr: Manager, who: Owner) -> dict[str, Any]:
    request = NewWorkspace(
        image=None if body.template_id == BASE_TEMPLATE else body.template_id,
        env=dict(body.env_vars),
        labels=dict(body.metadata),
        network=None if body.allow_internet_access else "none",
        deadline_seconds=body.timeout or DEFAULT_TIMEOUT,
    )
    workspace: Workspace = await _call(mgr.create, who, request)
    return _sandbox(workspace, mgr)


@router.get("/v2/sandboxes")
async def list_sandboxes(
    mgr: Manager,
    who: Owner,
    metadata: str = "",
    state: str = "",
    order: Literal["asc", "desc"] = "asc",
    template: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    next_token: Annotated[str, Query(alias="nextToken")] = "",
) -> Response:
    wanted = dict(parse_qsl(metadata))
    states = {s for s in state.split(",") if s} or {"running", "paused"}
    found: list[Workspace] = await _call(mgr.find, who, None, wanted)
    listed = [w for w in found if _state(w) in states and (not template or _template(w, mgr) == template)]
    listed.sort(key=lambda w: (w.created_at, w.id), reverse=order == "desc")
    ids = [w.id for w in listed]
    start = ids.index(next_token) + 1 if next_token in ids else 0  # the token: the last id of the page before
    page = listed[start : start + limit]
    headers = {"x-next-token": page[-1].id} if start + limit < len(listed) and page else {}
    return JSONResponse([_listed(w, mgr) for w in page], headers=headers)


@router.get("/sandboxes/{sandbox_id}")
async def get_info(sandbox_id: str, mgr: Manager, who: Owner) -> dict[str, Any]:
    workspace: Workspace = await _call(_found, mgr, who, sandbox_id)
    return {**_listed(workspace, mgr), "envdAccessToken": None, "domain": None}


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill(sandbox_id: str, mgr: Manager, who: Owner) -> Response:
    await _call(_found, mgr, who, sandbox_id)
    await _call(mgr.delete, who, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: Timeout, mgr: Manager, who: Owner) -> Response:
    await _call(_found, mgr, who, sandbox_id)
    await _call(mgr.set_deadline, who, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect(sandbox_id: str, body: Timeout, mgr: Manager, who: Owner) -> dict[str, Any]:
    workspace: Workspace = await _call(_found, mgr, who, sandbox_id)
    if workspace.status == Status.STOPPED:
        workspace = await _call(mgr.start, who, sandbox_id)
    workspace = await _call(mgr.set_deadline, who, sandbox_id, body.timeout, True)
    return _sandbox(workspace, mgr)


def _found(mgr: WorkspaceManager, owner: str, sandbox_id: str) -> Workspace:
    """The owner's sandbox; NotFound in E2B's words otherwise (and for a deleted or failed one)."""
    try:
        workspace = mgr.get(owner, sandbox_id)
    except NotFound:
        workspace = None
    if workspace is None or workspace.status not in (Status.RUNNING, Status.STOPPED, Status.STARTING):
        raise NotFound(f"sandbox {sandbox_id} not found")
    return workspace


def _template(workspace: Workspace, mgr: WorkspaceManager) -> str:
    return BASE_TEMPLATE if workspace.image == mgr.settings.image else workspace.image


def _state(workspace: Workspace) -> str:
    return "paused" if workspace.status == Status.STOPPED else "running"


def _sandbox(workspace: Workspace, mgr: WorkspaceManager) -> dict[str, Any]:
    return {
        "sandboxID": workspace.id,
        "templateID": _template(workspace, mgr),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": None,
        "domain": None,
    }


def _listed(workspace: Workspace, mgr: WorkspaceManager) -> dict[str, Any]:
    end: datetime | None = workspace.expires_at
    return {
        "sandboxID": workspace.id,
        "templateID": _template(workspace, mgr),
        "clientID": CLIENT_ID,
        "startedAt": workspace.created_at.isoformat(),
        "endAt": (end or workspace.created_at).isoformat(),
        "cpuCount": max(1, int(workspace.cpu)),
        "memoryMB": workspace.memory >> 20,
        "diskSizeMB": workspace.disk >> 20,
        "state": _state(workspace),
        "envdVersion": ENVD_VERSION,
        "metadata": dict(workspace.labels),
    }
