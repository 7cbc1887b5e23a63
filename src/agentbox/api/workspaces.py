"""Workspace routes: create, list, get and delete a workspace; stop, start and extend it; its CPU and memory."""

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from agentbox.db.models import Workspace
from agentbox.errors import NotFound, Unprocessable
from agentbox.web.dependencies import History, Manager, Owner, Who, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.domain import Status
from agentbox.wire.network import policy_of
from agentbox.wire.workspaces import (
    CreateWorkspace,
    ExtendWorkspace,
    SetNetwork,
    UsageOut,
    UsageSampleOut,
    WorkspaceList,
    WorkspaceOut,
)
from agentbox.workspaces.usage import UsageSample

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])

_QUOTA = (
    429,
    "WORKSPACE_MAX_CONCURRENT workspaces are active, or a quota of your API key would be passed (the detail "
    "names it); or too many refused credentials from your address (`Retry-After`).",
)
_NOT_STOPPABLE = (400, "Its provider cannot stop and start workspaces (E2B).")
_NOT_RUNNING_OR_STOPPED = (409, "It is neither running nor stopped (starting, failed).")


def workspace_out(workspace: Workspace, usage: UsageSample | None = None) -> WorkspaceOut:
    """A workspace's row as the API shows it, with its last measurement of CPU and memory."""
    computed = ("network", "usage", "suspended")
    fields = {name: getattr(workspace, name) for name in WorkspaceOut.model_fields if name not in computed}
    network = policy_of(workspace.network, workspace.egress, workspace.allow)
    suspended = workspace.suspended_at is not None
    return WorkspaceOut.model_validate({**fields, "network": network, "usage": usage, "suspended": suspended})


@router.post(
    "",
    summary="Create a workspace",
    status_code=201,
    response_model=WorkspaceOut,
    responses=errors(
        (
            400,
            "The provider cannot do what is asked (sizes, network policy, an unavailable provider, an image it "
            "cannot find), or `repo` names no GitHub App of yours.",
        ),
        (404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES)."),
        413,
        422,
        _QUOTA,
        502,
        503,
    ),
)
async def create_workspace(
    mgr: Manager,
    who: Who,
    # No body at all is every default: `curl -X POST .../workspaces` makes a workspace, as the first try should.
    body: Annotated[CreateWorkspace, Body(default_factory=CreateWorkspace)],
) -> WorkspaceOut:
    """Create a workspace and return it, running (201).

    It comes from the warm pool when one matches, else it is booted; the answer comes once code has
    run in it.

    Needs an API key; the workspace is its owner's, within the key's quotas.
    """
    return workspace_out(await in_thread(mgr.create, who.owner, body.to_domain(), who.quota))


@router.get(
    "",
    summary="List your workspaces",
    response_model=WorkspaceList,
    responses=errors(
        (404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES)."),
        (422, "An unknown status, or a label filter that is not key=value."),
    ),
)
async def list_workspaces(
    mgr: Manager,
    who: Owner,
    history: History,
    status: Status | None = None,
    label: Annotated[list[str], Query(description="key=value; repeat to require several")] = [],  # noqa: B006
) -> WorkspaceList:
    """List your workspaces that are not deleted, optionally only those with `status` and every `label`.

    Needs an API key: its owner's workspaces are listed.
    """
    wanted = {}
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Unprocessable(f"label filter {item!r} must be key=value")
        wanted[key] = value
    found = await in_thread(mgr.find, who, status, wanted)
    return WorkspaceList(workspaces=[workspace_out(w, history.latest(w.id) if history else None) for w in found])


@router.get("/{workspace_id}", summary="Get a workspace", response_model=WorkspaceOut, responses=errors(404))
async def get_workspace(workspace_id: str, mgr: Manager, who: Owner, history: History) -> WorkspaceOut:
    """Return one of your workspaces.

    Needs an API key: the workspace's owner's.
    """
    workspace = await in_thread(mgr.get, who, workspace_id)
    return workspace_out(workspace, history.latest(workspace.id) if history else None)


@router.get(
    "/{workspace_id}/usage",
    summary="A workspace's CPU and memory",
    response_model=UsageOut,
    responses=errors(
        (
            404,
            "No workspace of yours with this id, workspaces are disabled, or this server measures nothing "
            "(WORKSPACE_USAGE_INTERVAL=0).",
        )
    ),
)
async def workspace_usage(workspace_id: str, mgr: Manager, who: Owner, history: History) -> UsageOut:
    """Its CPU and memory over the last hour, sampled every WORKSPACE_USAGE_INTERVAL seconds while it
    runs (kept by this server since it started). Empty when its provider cannot measure them.

    Needs an API key: the workspace's owner's.
    """
    await in_thread(mgr.get, who, workspace_id)
    if history is None:
        raise NotFound(
            "this server does not measure workspaces (WORKSPACE_USAGE_INTERVAL=0): set it to the seconds "
            "between two measurements (10 by default) and restart it"
        )
    samples = [UsageSampleOut.model_validate(s) for s in history.of(workspace_id)]
    return UsageOut(interval=history.interval, samples=samples)


@router.delete(
    "/{workspace_id}",
    summary="Delete a workspace",
    status_code=204,
    responses=errors((404, "No workspace of yours with this id (or it is deleted already)."), 502, 503),
)
async def delete_workspace(workspace_id: str, mgr: Manager, who: Owner) -> Response:
    """Delete a workspace and everything in it: its container and its storage (204, no body).

    Needs an API key: the workspace's owner's.
    """
    await in_thread(mgr.delete, who, workspace_id)
    return Response(status_code=204)


@router.post(
    "/{workspace_id}/stop",
    summary="Stop a workspace",
    response_model=WorkspaceOut,
    responses=errors(_NOT_STOPPABLE, 404, _NOT_RUNNING_OR_STOPPED, 502, 503),
)
async def stop_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
    """Stop a running workspace, keeping its files; return it (a stopped one is returned as is).

    Needs an API key: the workspace's owner's.
    """
    return workspace_out(await in_thread(mgr.stop, who, workspace_id))


@router.post(
    "/{workspace_id}/pause",
    summary="Pause a workspace",
    response_model=WorkspaceOut,
    responses=errors(_NOT_STOPPABLE, 404, _NOT_RUNNING_OR_STOPPED, 502, 503),
)
async def pause_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
    """Pause a running workspace: its memory and processes kept where the runtime can checkpoint it,
    its files always; `memory_kept` says which. `start` resumes it.

    Needs an API key: the workspace's owner's.
    """
    return workspace_out(await in_thread(mgr.pause, who, workspace_id))


@router.post(
    "/{workspace_id}/start",
    summary="Start a workspace",
    response_model=WorkspaceOut,
    responses=errors(404, (409, "It is neither stopped nor running (starting, failed)."), _QUOTA, 502, 503),
)
async def start_workspace(workspace_id: str, mgr: Manager, who: Who) -> WorkspaceOut:
    """Start a stopped (or paused) workspace again; return it (a running one is returned as is).

    Needs an API key: the workspace's owner's, within its quotas.
    """
    return workspace_out(await in_thread(mgr.start, who.owner, workspace_id, True, who.quota))


@router.post(
    "/{workspace_id}/extend",
    summary="Extend a workspace's TTL",
    response_model=WorkspaceOut,
    responses=errors(404, (409, "It is persistent: it never expires."), 413, 422),
)
async def extend_workspace(
    workspace_id: str, mgr: Manager, who: Owner, body: ExtendWorkspace | None = None
) -> WorkspaceOut:
    """Renew an ephemeral workspace's TTL from now (by `ttl_days`, else its own TTL); return it.

    Needs an API key: the workspace's owner's.
    """
    ttl_days = body.ttl_days if body else None
    return workspace_out(await in_thread(mgr.extend, who, workspace_id, ttl_days))


@router.patch(
    "/{workspace_id}/network",
    summary="Change a workspace's network policy",
    response_model=WorkspaceOut,
    responses=errors(
        (
            400,
            "Its provider cannot enforce the policy, or change it while the workspace exists; or the policy names "
            "an address workspaces may never reach.",
        ),
        404,
        (409, 'A change to or from "none" (it needs a new network interface: create a new workspace).'),
        413,
        422,
        502,
        503,
    ),
)
async def set_workspace_network(workspace_id: str, body: SetNetwork, mgr: Manager, who: Owner) -> WorkspaceOut:
    """Change what the workspace may reach; its new connections obey the new policy on return (connections
    already open keep going). A stopped workspace gets it when started.

    Needs an API key: the workspace's owner's.
    """
    return workspace_out(await in_thread(mgr.set_network, who, workspace_id, body.network))
