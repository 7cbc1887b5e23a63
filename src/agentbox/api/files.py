"""File routes: read and write one file (or list a directory), move directories as tar archives, watch one."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from agentbox.errors import PayloadTooLarge
from agentbox.web.dependencies import InUse, Manager, WorkspacePath, in_thread
from agentbox.web.files import IN_ONE_PIECE, file_answer, spooled, sync_chunks
from agentbox.web.ndjson import guarded_lines, json_line
from agentbox.web.openapi import FILE_ERRORS, errors, ndjson
from agentbox.web.streaming import ClosingStreamingResponse
from agentbox.wire.files import DirEntryOut, DirListing, WatchEventOut, WriteResult

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}", tags=["files"])


BINARY = {"schema": {"type": "string", "format": "binary"}}
_ARCHIVES = (
    400,
    "The workspace's provider cannot move archives (E2B: use /files), the archive is not a tar, or the "
    "operation failed in the workspace otherwise (the detail says why).",
)


@router.get(
    "/files",
    summary="Read a file or list a directory",
    response_model=None,
    responses=errors(*FILE_ERRORS)
    | {
        200: {
            "model": DirListing,
            "description": "A file's bytes (`application/octet-stream`), or a directory's entries (JSON).",
            "content": {"application/octet-stream": BINARY},
            "headers": {"X-File-Mode": {"description": "a file's permissions, octal", "schema": {"type": "string"}}},
        }
    },
)
async def read_file(workspace_id: str, path: WorkspacePath, ws: InUse) -> Response:
    """Return a file's bytes (octet-stream, its mode in X-File-Mode), or a directory's entries (JSON).

    Needs an API key: the workspace's owner's.
    """
    found = await in_thread(ws.read, path)
    if isinstance(found, list):
        entries = [DirEntryOut(name=e.name, type=e.type, size=e.size, mode=f"{e.mode:o}", mtime=e.mtime) for e in found]
        return JSONResponse(DirListing(path=path, entries=entries).model_dump())
    stat, body = found
    return await file_answer(stat.size, body, {"X-File-Mode": f"{stat.mode:o}"})


@router.put(
    "/files",
    summary="Write a file",
    response_model=WriteResult,
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}},
    responses=errors(*FILE_ERRORS, (413, "The file is larger than WORKSPACE_MAX_UPLOAD."), 507),
)
async def write_file(
    workspace_id: str,
    path: WorkspacePath,
    request: Request,
    mgr: Manager,
    ws: InUse,
    mode: Annotated[str, Query(pattern=r"^[0-7]{3,4}$", description="octal permissions")] = "644",
) -> WriteResult:
    """Write the request body to a file, replacing it whole or not at all; return its path and size.

    Missing parent directories are made.

    Needs an API key: the workspace's owner's.
    """
    limit = mgr.settings.max_upload
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        size = int(declared)
        if size > limit:
            raise PayloadTooLarge(f"the file is {size} bytes; the limit (WORKSPACE_MAX_UPLOAD) is {limit}")
        # A small file is taken whole first: each piece handed between the event loop and the
        # worker thread costs a thread switch (1 MiB took ~5 ms in 64 KiB pieces).
        chunks = iter([await request.body()]) if size <= IN_ONE_PIECE else sync_chunks(request.stream(), limit)
        written = await in_thread(ws.write_file, path, chunks, size, int(mode, 8))
    else:
        # No length given (chunked upload): spool it first, since the helper commits a file
        # only when it got exactly the announced number of bytes.
        spool, size = await spooled(request.stream(), limit)
        with spool:
            written = await in_thread(ws.write_file, path, iter(lambda: spool.read(1 << 16), b""), size, int(mode, 8))
    return WriteResult(path=path, size=written)


@router.get(
    "/archive",
    summary="Read a directory as a tar archive",
    response_model=None,
    response_class=ClosingStreamingResponse,
    responses=errors(*FILE_ERRORS, _ARCHIVES)
    | {200: {"description": "The directory as a tar archive.", "content": {"application/x-tar": BINARY}}},
)
async def read_archive(workspace_id: str, path: WorkspacePath, ws: InUse) -> ClosingStreamingResponse:
    """Stream a directory as an uncompressed tar archive, its entries relative to it.

    Needs an API key: the workspace's owner's.
    """
    body = await in_thread(ws.read_archive, path)
    return ClosingStreamingResponse(body, media_type="application/x-tar")


@router.put(
    "/archive",
    summary="Unpack a tar archive into a directory",
    status_code=204,
    openapi_extra={"requestBody": {"required": True, "content": {"application/x-tar": BINARY}}},
    responses=errors(*FILE_ERRORS, _ARCHIVES, (413, "The archive is larger than WORKSPACE_MAX_UPLOAD."), 507),
)
async def write_archive(workspace_id: str, path: WorkspacePath, request: Request, mgr: Manager, ws: InUse) -> Response:
    """Unpack the tar archive in the request body into a directory (204, no body).

    Needs an API key: the workspace's owner's.
    """
    chunks = sync_chunks(request.stream(), mgr.settings.max_upload)
    await in_thread(ws.write_archive, path, chunks)
    return Response(status_code=204)


@router.get(
    "/watch",
    summary="Watch a directory",
    response_class=ClosingStreamingResponse,
    responses=ndjson("WatchEventOut", "What happens under the directory, from now on.")
    | errors(*FILE_ERRORS, (400, "The workspace's provider cannot watch files.")),
)
async def watch(
    workspace_id: str,
    path: WorkspacePath,
    ws: InUse,
    recursive: Annotated[bool, Query(description="also what happens in its subdirectories")] = False,
) -> ClosingStreamingResponse:
    """Stream what happens under a directory from now on, as NDJSON `{"type", "path"}` lines
    (type: create, write, remove, rename, chmod), until you leave or the directory goes.

    The answer starts once the watch is in place.

    Needs an API key: the workspace's owner's.
    """
    events = await in_thread(ws.watch, path, recursive)
    # A quiet watch still hands the response an empty piece now and then: the point where a client
    # that left is noticed, and the watch in the sandbox ends.
    lines = (json_line(WatchEventOut(type=e.type, path=e.path)) if e else b"" for e in events)
    return ClosingStreamingResponse(guarded_lines(lines, events), media_type="application/x-ndjson")
