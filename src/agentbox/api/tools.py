"""Tool routes: the file tools agents call, on any provider (grep, glob and shell sessions to come)."""

from fastapi import APIRouter

from agentbox.api.dependencies import Manager, Owner, in_thread
from agentbox.schemas import EditToolIn, EditToolOut, ReadToolIn, ReadToolOut, WriteResult, WriteToolIn

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/tools", tags=["tools"])


@router.post("/read", response_model=ReadToolOut)
async def read(workspace_id: str, body: ReadToolIn, mgr: Manager, who: Owner) -> ReadToolOut:
    """Read a text file as numbered lines (from `offset`, at most `limit`), or list a directory.

    A binary file says so (`is_binary`) instead of giving its bytes. Errors: 404 when the path does
    not exist, 413 past 16 MiB (use GET /files), 409 when the workspace is not running.
    """
    found = await in_thread(mgr.read_tool, who, workspace_id, body.path, body.offset, body.limit)
    return ReadToolOut(path=body.path, **vars(found))


@router.post("/write", response_model=WriteResult)
async def write(workspace_id: str, body: WriteToolIn, mgr: Manager, who: Owner) -> WriteResult:
    """Write a text file whole (UTF-8), making missing parent directories; owned by the workspace's user.

    Errors: 404 when the workspace is not yours, 409 when it is not running, 507 when its disk is full.
    """
    data = body.content.encode()
    written = await in_thread(mgr.write_file, who, workspace_id, body.path, [data], len(data))
    return WriteResult(path=body.path, size=written)


@router.post("/edit", response_model=EditToolOut)
async def edit(workspace_id: str, body: EditToolIn, mgr: Manager, who: Owner) -> EditToolOut:
    """Replace `old_string` with `new_string` in a text file, exactly; the file keeps its mode.

    Errors: 422 when `old_string` is not in the file, or is there more than once without
    `replace_all` (the detail says which), or the file is binary; 404 when it does not exist.
    """
    count = await in_thread(
        mgr.edit_tool, who, workspace_id, body.path, body.old_string, body.new_string, body.replace_all
    )
    return EditToolOut(path=body.path, replacements=count)
