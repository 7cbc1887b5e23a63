"""Volumes: create (with a size), list, get and delete your named persistent volumes. A workspace mounts them
at its create (`volumes` of POST /workspaces); they outlive the workspaces that used them."""

from typing import Annotated

from fastapi import APIRouter, Path, Response

from agentbox.web.dependencies import Manager, Owner, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.volumes import CreateVolume, VolumeList, VolumeOut
from agentbox.workspaces.volumes import VolumeState

router = APIRouter(prefix="/api/v1/volumes", tags=["volumes"])

VolumeRef = Annotated[str, Path(min_length=1, max_length=64, description="the volume's name, or its id (vol-...)")]
_NO_VOLUMES = (400, "No provider on this server keeps volumes (they need the gvisor or docker provider).")


def volume_out(state: VolumeState) -> VolumeOut:
    volume = state.volume
    fields = {"id": volume.id, "name": volume.name, "size": volume.size, "created_at": volume.created_at}
    return VolumeOut.model_validate(fields | {"used_by": state.used_by, "used": state.used})


@router.post(
    "",
    summary="Create a volume",
    status_code=201,
    response_model=VolumeOut,
    responses=errors(
        _NO_VOLUMES,
        (404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES)."),
        (409, "You have a volume of this name already, or as many volumes as WORKSPACE_MAX_VOLUMES allows."),
        413,
        (422, "A malformed name, or a size under 16M or over WORKSPACE_MAX_VOLUME_SIZE."),
        502,
    ),
)
async def create_volume(body: CreateVolume, mgr: Manager, who: Owner) -> VolumeOut:
    """Create a named volume of `size` bytes (201): its own filesystem, so writes past its size fail (ENOSPC)
    in the workspaces that mount it.

    Needs an API key; the volume is its owner's, and only that owner's workspaces can mount it.
    """
    return volume_out(await in_thread(mgr.volumes.create, who, body.name, body.size))


@router.get(
    "",
    summary="List your volumes",
    response_model=VolumeList,
    responses=errors((404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES).")),
)
async def list_volumes(mgr: Manager, who: Owner) -> VolumeList:
    """List your volumes by name, each with the workspaces that mount it and the bytes written on it.

    Needs an API key: its owner's volumes are listed.
    """
    return VolumeList(volumes=[volume_out(state) for state in await in_thread(mgr.volumes.list, who)])


@router.get(
    "/{volume}",
    summary="Get a volume",
    response_model=VolumeOut,
    responses=errors((404, "No volume of yours with this name or id."), (422, "A name over 64 characters.")),
)
async def get_volume(volume: VolumeRef, mgr: Manager, who: Owner) -> VolumeOut:
    """Return one of your volumes, by name or id.

    Needs an API key: the volume's owner's.
    """
    return volume_out(await in_thread(mgr.volumes.get, who, volume))


@router.delete(
    "/{volume}",
    summary="Delete a volume",
    status_code=204,
    responses=errors(
        (404, "No volume of yours with this name or id."),
        (409, "A workspace (not deleted) mounts it: the detail names each; delete them first."),
        (422, "A name over 64 characters."),
        502,
    ),
)
async def delete_volume(volume: VolumeRef, mgr: Manager, who: Owner) -> Response:
    """Delete a volume and everything on it (204, no body), once no workspace of yours mounts it.

    Needs an API key: the volume's owner's.
    """
    await in_thread(mgr.volumes.delete, who, volume)
    return Response(status_code=204)
