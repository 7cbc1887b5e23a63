"""E2B's volume API, its control half (what the SDK's `Volume.create`, `connect`, `get_info`, `list` and
`destroy` call), served from agentbox's volumes: a volume made here is the owner's named volume, which
/api/v1/volumes lists and a sandbox mounts at its create (`volumeMounts: [{"name", "path"}]`, control.py).

E2B's volumes have no size: one made here gets the server's workspace disk size (WORKSPACE_DEFAULT_DISK),
at most WORKSPACE_MAX_VOLUME_SIZE (a sparse file: the host spends only what is written). The content half
(files read and written through the volume's token, without a sandbox) is not offered: its requests meet
the endpoint's 404, and the token answered opens nothing. Errors are E2B's shape (control.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from agentbox.e2b_api.control import PREFIX, E2BError, Manager, Who
from agentbox.errors import AgentboxError, NotFound
from agentbox.web.dependencies import in_thread
from agentbox.wire.volumes import MIN_VOLUME_SIZE, name_problem
from agentbox.workspaces.volumes import VolumeState

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: The token E2B hands out for a volume's content API, which agentbox does not offer: it opens nothing.
NO_CONTENT_TOKEN = "agentbox-offers-no-volume-content-api"


class NewVolume(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=256)


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return await in_thread(function, *args)
    except NotFound:
        raise E2BError(404, f"volume {args[-1]!r} not found") from None
    except AgentboxError as exc:
        raise E2BError(400 if exc.status_code == 422 else exc.status_code, exc.detail) from None


def _shown(state: VolumeState, token: bool = True) -> dict[str, Any]:
    shown = {"volumeID": state.volume.id, "name": state.volume.name}
    return shown | {"token": NO_CONTENT_TOKEN} if token else shown


@router.post("/volumes", status_code=201)
async def create_volume(body: NewVolume, mgr: Manager, who: Who) -> dict[str, Any]:
    problem = name_problem(body.name)
    if problem is not None:
        raise E2BError(400, f"name: {problem}")
    size = max(MIN_VOLUME_SIZE, min(mgr.settings.default_disk, mgr.settings.max_volume_size))
    return _shown(await _call(mgr.volumes.create, who.owner, body.name, size))


@router.get("/volumes")
async def list_volumes(mgr: Manager, who: Who) -> list[dict[str, Any]]:
    return [_shown(state, token=False) for state in await _call(mgr.volumes.list, who.owner)]


@router.get("/volumes/{volume_id}")
async def get_volume(volume_id: str, mgr: Manager, who: Who) -> dict[str, Any]:
    return _shown(await _call(mgr.volumes.get, who.owner, volume_id))


@router.delete("/volumes/{volume_id}", status_code=204)
async def delete_volume(volume_id: str, mgr: Manager, who: Who) -> Response:
    await _call(mgr.volumes.delete, who.owner, volume_id)
    return Response(status_code=204)
