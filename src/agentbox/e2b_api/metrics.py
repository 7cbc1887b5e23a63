"""E2B's sandbox metrics (what the SDK's `Sandbox.get_metrics()`, sync and async, calls; and the
several-sandboxes route of E2B's API), served from the usage samples agentbox already keeps
(workspaces/usage.py): one point per sample, every WORKSPACE_USAGE_INTERVAL seconds while the
sandbox runs, for the last hour at most.

How agentbox's samples become E2B's fields:
- `cpuCount`: the sandbox's CPUs as `get_info` gives them; `cpuUsedPct`: the cores busy since the
  sample before, as a percentage of the CPUs the sandbox may use (100: all of them busy). The first
  sample of a run has no CPU figure (nothing to measure it against): it is left out, not shown as 0.
- `memUsed`: its working set (without the file cache the kernel can take back), `memTotal` its
  memory limit; `memCache`: 0, agentbox does not keep it.
- `diskUsed`: bytes in use on its own disk (0 where its provider cannot say), `diskTotal` its disk size.

`start` and `end` (Unix seconds, as the SDK sends them) bound a point's whole second (`timestampUnix`),
both ends included. A sandbox not measured yet, or a server that measures nothing
(WORKSPACE_USAGE_INTERVAL=0), gets an empty list, as E2B answers a sandbox without metrics.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Query

from agentbox.db.models import Workspace
from agentbox.e2b_api.control import PREFIX, E2BError, Manager, Who, _call, _found
from agentbox.errors import NotFound
from agentbox.web.dependencies import History, in_thread
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.usage import UsageSample

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: E2B's bound on the several-sandboxes route.
MAX_IDS = 100

Seconds = Annotated[int | None, Query(ge=0, le=2**53)]


def metric(workspace: Workspace, sample: UsageSample) -> dict[str, Any] | None:
    """A sample in E2B's shape; None for one without a CPU figure."""
    if sample.cpu is None:
        return None
    at = sample.at if sample.at.tzinfo is not None else sample.at.replace(tzinfo=UTC)
    share = sample.cpu / workspace.cpu if workspace.cpu > 0 else 0.0
    return {
        "timestamp": at.astimezone(UTC).isoformat(),
        "timestampUnix": int(at.timestamp()),
        "cpuCount": max(1, int(workspace.cpu)),  # as get_info counts them
        # Clamped: the host cgroup also counts gVisor's own kernel, which can tip a busy sandbox past its share.
        "cpuUsedPct": round(min(100.0, max(0.0, share * 100)), 2),
        "memUsed": min(sample.memory, workspace.memory),
        "memTotal": workspace.memory,
        "memCache": 0,
        "diskUsed": min(sample.disk or 0, workspace.disk),
        "diskTotal": workspace.disk,
    }


@router.get("/sandboxes/metrics")
async def several(
    mgr: Manager,
    who: Who,
    history: History,
    sandbox_ids: Annotated[str, Query(max_length=MAX_IDS * 64)],
) -> dict[str, Any]:
    """Each named sandbox's latest point; sandboxes that are not the caller's, gone or not measured yet
    are left out (E2B lists the running ones it has metrics for)."""
    ids = list(dict.fromkeys(i for i in sandbox_ids.split(",") if i))
    if not ids:
        raise E2BError(400, "sandbox_ids: name at least one sandbox (comma-separated identifiers)")
    if len(ids) > MAX_IDS:
        raise E2BError(400, f"sandbox_ids: at most {MAX_IDS} sandboxes at once, {len(ids)} given")
    found: dict[str, Any] = {}
    if history is None:
        return {"sandboxes": found}
    for workspace in await in_thread(_owned, mgr, who.owner, ids):
        latest = next((m for s in reversed(history.of(workspace.id)) if (m := metric(workspace, s)) is not None), None)
        if latest is not None:
            found[workspace.id] = latest
    return {"sandboxes": found}


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str, mgr: Manager, who: Who, history: History, start: Seconds = None, end: Seconds = None
) -> list[dict[str, Any]]:
    if start is not None and end is not None and start > end:
        raise E2BError(400, f"start ({start}) is after end ({end}): start must be the earlier Unix time")
    workspace: Workspace = await _call(_found, mgr, who.owner, sandbox_id)
    if history is None:
        return []
    points = (metric(workspace, s) for s in history.of(workspace.id))  # at most an hour's: the history's bound
    return [
        p
        for p in points
        if p is not None
        and (start is None or p["timestampUnix"] >= start)
        and (end is None or p["timestampUnix"] <= end)
    ]


def _owned(mgr: WorkspaceManager, owner: str, ids: list[str]) -> list[Workspace]:
    found = []
    for sandbox_id in ids:
        try:
            found.append(_found(mgr, owner, sandbox_id))
        except NotFound:
            continue
    return found
