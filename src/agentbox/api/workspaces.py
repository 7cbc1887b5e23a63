"""Workspace routes: create, list, get and delete a workspace; stop, start and extend it; its CPU and memory."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentbox.api.dependencies import History, Manager, Owner, Who, in_thread
from agentbox.errors import NotFound, Unprocessable
from agentbox.models import Status
from agentbox.schemas import CreateWorkspace, ExtendWorkspace, UsageOut, UsageSampleOut, WorkspaceList, WorkspaceOut

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])


@router.post("", status_code=201, response_model=WorkspaceOut)
async def create_workspace(body: CreateWorkspace, mgr: Manager, who: Who) -> WorkspaceOut:
    """Create a workspace and return it, running (201).

    It comes from the warm pool when one matches, else it is booted. Errors: 400 when the
    provider cannot do what is asked (sizes, network policy, unknown provider, no GitHub App
    for `repo`), 422 for a malformed body, 429 when WORKSPACE_MAX_CONCURRENT workspaces are
    active or a quota of your API key would be passed (the detail names it), 502/503 when the
    provider fails or is unreachable.
    """
    return WorkspaceOut.of(await in_thread(mgr.create, who.owner, body.to_domain(), who.quota))


@router.get("", response_model=WorkspaceList)
async def list_workspaces(
    mgr: Manager,
    who: Owner,
    history: History,
    status: Status | None = None,
    label: Annotated[list[str], Query(description="key=value; repeat to require several")] = [],  # noqa: B006
) -> WorkspaceList:
    """List your workspaces that are not deleted, optionally only those with `status` and every `label`.

    Errors: 422 for an unknown status or a label filter that is not key=value.
    """
    wanted = {}
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Unprocessable(f"label filter {item!r} must be key=value")
        wanted[key] = value
    found = await in_thread(mgr.find, who, status, wanted)
    return WorkspaceList(workspaces=[WorkspaceOut.of(w, history.latest(w.id) if history else None) for w in found])


@router.get("/{workspace_id}", response_model=WorkspaceOut)
async def get_workspace(workspace_id: str, mgr: Manager, who: Owner, history: History) -> WorkspaceOut:
    """Return one of your workspaces. Errors: 404 when there is no such workspace of yours."""
    workspace = await in_thread(mgr.get, who, workspace_id)
    return WorkspaceOut.of(workspace, history.latest(workspace.id) if history else None)


@router.get("/{workspace_id}/usage", response_model=UsageOut)
async def workspace_usage(workspace_id: str, mgr: Manager, who: Owner, history: History) -> UsageOut:
    """Its CPU and memory over the last hour, sampled every WORKSPACE_USAGE_INTERVAL seconds while it
    runs (kept by this server since it started). Empty when its provider cannot measure them.

    Errors: 404 when it is not yours, or when the server measures nothing (WORKSPACE_USAGE_INTERVAL=0).
    """
    await in_thread(mgr.get, who, workspace_id)
    if history is None:
        raise NotFound(
            "this server does not measure workspaces (WORKSPACE_USAGE_INTERVAL=0): set it to the seconds "
            "between two measurements (10 by default) and restart it"
        )
    samples = [UsageSampleOut.model_validate(s) for s in history.of(workspace_id)]
    return UsageOut(interval=history.interval, samples=samples)


@router.delete("/{workspace_id}", status_code=204)
async def delete_workspace(workspace_id: str, mgr: Manager, who: Owner) -> Response:
    """Delete a workspace and everything in it (204, no body). Errors: 404 when it is not yours or gone."""
    await in_thread(mgr.delete, who, workspace_id)
    return Response(status_code=204)


@router.post("/{workspace_id}/stop", response_model=WorkspaceOut)
async def stop_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
    """Stop a running workspace, keeping its files; return it (a stopped one is returned as is).

    Errors: 400 when its provider cannot stop and start workspaces (E2B), 404 when it is not
    yours, 409 when it is neither running nor stopped.
    """
    return WorkspaceOut.of(await in_thread(mgr.stop, who, workspace_id))


@router.post("/{workspace_id}/pause", response_model=WorkspaceOut)
async def pause_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
    """Pause a running workspace: its memory and processes kept where the runtime can checkpoint it,
    its files always; `memory_kept` says which. `start` resumes it.

    Errors: 400 when its provider cannot stop and start workspaces (E2B), 404 when it is not
    yours, 409 when it is neither running nor stopped.
    """
    return WorkspaceOut.of(await in_thread(mgr.pause, who, workspace_id))


@router.post("/{workspace_id}/start", response_model=WorkspaceOut)
async def start_workspace(workspace_id: str, mgr: Manager, who: Who) -> WorkspaceOut:
    """Start a stopped workspace again; return it (a running one is returned as is).

    Errors: 404 when it is not yours, 409 when it is neither stopped nor running, 429 when
    WORKSPACE_MAX_CONCURRENT workspaces are active or a quota of your API key would be passed.
    """
    return WorkspaceOut.of(await in_thread(mgr.start, who.owner, workspace_id, True, who.quota))


@router.post("/{workspace_id}/extend", response_model=WorkspaceOut)
async def extend_workspace(
    workspace_id: str, mgr: Manager, who: Owner, body: ExtendWorkspace | None = None
) -> WorkspaceOut:
    """Renew an ephemeral workspace's TTL from now (by `ttl_days`, else its own TTL); return it.

    Errors: 404 when it is not yours, 409 when it is persistent (it never expires).
    """
    ttl_days = body.ttl_days if body else None
    return WorkspaceOut.of(await in_thread(mgr.extend, who, workspace_id, ttl_days))
