"""Tool routes: the file and search tools agents call, on any provider."""

from fastapi import APIRouter

from agentbox.api.dependencies import Manager, Owner, in_thread
from agentbox.schemas import (
    EditToolIn,
    EditToolOut,
    GlobToolIn,
    GlobToolOut,
    GrepLineOut,
    GrepToolIn,
    GrepToolOut,
    ReadToolIn,
    ReadToolOut,
    WriteResult,
    WriteToolIn,
)
from agentbox.search import GrepQuery

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


@router.post("/glob", response_model=GlobToolOut)
async def glob(workspace_id: str, body: GlobToolIn, mgr: Manager, who: Owner) -> GlobToolOut:
    """Files (and links) under `path` whose path relative to it matches `pattern`, newest first.

    Bounded: at most `limit` paths, 8 MiB of listing and 20 seconds; `truncated` says when a
    bound was reached. Errors: 404 when `path` does not exist.
    """
    found = await in_thread(mgr.glob_tool, who, workspace_id, body.pattern, body.path, body.limit)
    return GlobToolOut(paths=found.paths, truncated=found.truncated)


@router.post("/grep", response_model=GrepToolOut)
async def grep(workspace_id: str, body: GrepToolIn, mgr: Manager, who: Owner) -> GrepToolOut:
    """Lines matching a regular expression under `path`, with `context` lines around them.

    Runs ripgrep in the workspace (files that .gitignore or a hidden name hides, and binary files,
    are skipped), or grep -P where the image has no ripgrep. Bounded: at most `limit` matching
    lines, 1 MiB of text and 20 seconds; `truncated` says when a bound stopped it. Errors: 404
    when `path` does not exist, 422 for a pattern the engine cannot parse (its message included).
    """
    query = GrepQuery(**body.model_dump())
    found = await in_thread(mgr.grep_tool, who, workspace_id, query)
    lines = [GrepLineOut(**vars(line)) for line in found.matches]
    return GrepToolOut(matches=lines, truncated=found.truncated, engine=found.engine)
