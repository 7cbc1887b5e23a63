"""Tool routes: the file and search tools agents call, on any provider."""

from fastapi import APIRouter

from agentbox.web.dependencies import InUse, in_thread
from agentbox.web.openapi import FILE_ERRORS, errors
from agentbox.wire.files import WriteResult
from agentbox.wire.tools import (
    EditToolIn,
    EditToolOut,
    GlobToolIn,
    GlobToolOut,
    GrepLineOut,
    GrepToolIn,
    GrepToolOut,
    ReadToolIn,
    ReadToolOut,
    WriteToolIn,
)
from agentbox.workspaces.search import GrepQuery

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/tools", tags=["tools"])


@router.post(
    "/read",
    summary="Read tool: a text file's numbered lines",
    response_model=ReadToolOut,
    responses=errors(*FILE_ERRORS, (413, "The file is over 16 MiB (read it with GET .../files), or the body is.")),
)
async def read(workspace_id: str, body: ReadToolIn, ws: InUse) -> ReadToolOut:
    """Read a text file as numbered lines (from `offset`, at most `limit`), or list a directory.

    A binary file says so (`is_binary`) instead of giving its bytes.

    Needs an API key: the workspace's owner's.
    """
    found = await in_thread(ws.read_tool, body.path, body.offset, body.limit)
    return ReadToolOut(path=body.path, **vars(found))


@router.post(
    "/write",
    summary="Write tool: a text file whole",
    response_model=WriteResult,
    responses=errors(*FILE_ERRORS, 413, 507),
)
async def write(workspace_id: str, body: WriteToolIn, ws: InUse) -> WriteResult:
    """Write a text file whole (UTF-8), making missing parent directories; owned by the workspace's user.

    Needs an API key: the workspace's owner's.
    """
    data = body.content.encode()
    written = await in_thread(ws.write_file, body.path, [data], len(data))
    return WriteResult(path=body.path, size=written)


@router.post(
    "/edit",
    summary="Edit tool: replace text in a file",
    response_model=EditToolOut,
    responses=errors(
        *FILE_ERRORS,
        413,
        (
            422,
            "`old_string` is not in the file, or is there more than once without `replace_all` (the detail says "
            "which), or the file is binary; or the body is not valid.",
        ),
        507,
    ),
)
async def edit(workspace_id: str, body: EditToolIn, ws: InUse) -> EditToolOut:
    """Replace `old_string` with `new_string` in a text file, exactly; the file keeps its mode.

    Needs an API key: the workspace's owner's.
    """
    count = await in_thread(ws.edit_tool, body.path, body.old_string, body.new_string, body.replace_all)
    return EditToolOut(path=body.path, replacements=count)


@router.post(
    "/glob", summary="Glob tool: find files by pattern", response_model=GlobToolOut, responses=errors(*FILE_ERRORS, 413)
)
async def glob(workspace_id: str, body: GlobToolIn, ws: InUse) -> GlobToolOut:
    """Files (and links) under `path` whose path relative to it matches `pattern`, newest first.

    Bounded: at most `limit` paths, 8 MiB of listing and 20 seconds; `truncated` says when a
    bound was reached.

    Needs an API key: the workspace's owner's.
    """
    found = await in_thread(ws.glob_tool, body.pattern, body.path, body.limit)
    return GlobToolOut(paths=found.paths, truncated=found.truncated)


@router.post(
    "/grep",
    summary="Grep tool: search file contents",
    response_model=GrepToolOut,
    responses=errors(
        *FILE_ERRORS,
        413,
        (422, "The engine cannot parse the pattern (its message is in the detail), or the body is not valid."),
    ),
)
async def grep(workspace_id: str, body: GrepToolIn, ws: InUse) -> GrepToolOut:
    """Lines matching a regular expression under `path`, with `context` lines around them.

    Runs ripgrep in the workspace (files that .gitignore or a hidden name hides, and binary files,
    are skipped), or grep -P where the image has no ripgrep. Bounded: at most `limit` matching
    lines, 1 MiB of text and 20 seconds; `truncated` says when a bound stopped it.

    Needs an API key: the workspace's owner's.
    """
    query = GrepQuery(**body.model_dump())
    found = await in_thread(ws.grep_tool, query)
    lines = [GrepLineOut(**vars(line)) for line in found.matches]
    return GrepToolOut(matches=lines, truncated=found.truncated, engine=found.engine)
