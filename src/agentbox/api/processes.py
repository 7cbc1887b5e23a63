"""Background process routes: start one, list them, read output by offset, stdin, signals, kill.

The processes live in the workspace (see agentbox.sandbox.process_table): these routes hold no
state, so any server, restarted or not, serves any client that comes back with a PID.
"""

import contextlib
import signal
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from agentbox.errors import Conflict
from agentbox.sandbox.process_table import OutputDropped, ProcessEnded, ProcessEvent, ProcessOutput
from agentbox.web.dependencies import InUse, LookedAt, Manager, in_thread
from agentbox.web.files import sync_chunks
from agentbox.web.ndjson import guarded_lines, json_line
from agentbox.web.openapi import IN_SANDBOX, errors, ndjson
from agentbox.web.streaming import ClosingStreamingResponse
from agentbox.wire.processes import (
    OutputDroppedEvent,
    ProcessExitEvent,
    ProcessIn,
    ProcessList,
    ProcessOut,
    ProcessOutputEvent,
    SignalIn,
    TerminalSizeIn,
)

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/processes", tags=["processes"])

_NO_PROCESSES = (400, "The workspace's provider has no background processes.")
_NO_PID = (404, "No workspace of yours with this id, or no background process with this PID in it.")
#: What every route on one process may answer.
_ONE = (_NO_PROCESSES, *IN_SANDBOX, _NO_PID, 422)


@router.post(
    "",
    summary="Start a background process",
    status_code=201,
    response_model=ProcessOut,
    responses=errors(
        (400, "The program cannot be started (not found, `cwd` missing), or the provider has no background processes."),
        *IN_SANDBOX,
        413,
        422,
    ),
)
async def start_process(workspace_id: str, body: ProcessIn, ws: InUse) -> ProcessOut:
    """Start a process in the background and return it, running (201), with its PID in the workspace.

    It runs until it ends or is killed, whatever happens to this request or to the server.

    Needs an API key: the workspace's owner's.
    """
    return ProcessOut.of(await in_thread(ws.start_process, body.to_request()))


@router.get(
    "", summary="List background processes", response_model=ProcessList, responses=errors(_NO_PROCESSES, *IN_SANDBOX)
)
async def list_processes(workspace_id: str, ws: LookedAt) -> ProcessList:
    """Every background process started in the workspace, running or exited.

    Needs an API key: the workspace's owner's.
    """
    return ProcessList(processes=[ProcessOut.of(info) for info in await in_thread(lambda: ws.processes().list())])


@router.get("/{pid}", summary="Get a background process", response_model=ProcessOut, responses=errors(*_ONE))
async def get_process(workspace_id: str, pid: int, ws: InUse) -> ProcessOut:
    """One background process: its command, whether it runs, and how it ended if it has.

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    return ProcessOut.of(await in_thread(table.get, pid))


@router.get(
    "/{pid}/output",
    summary="A process's output, streamed",
    response_class=ClosingStreamingResponse,
    responses=ndjson("ProcessStreamEvent", "Its output from `offset`, then its exit once it has ended.")
    | errors(*_ONE),
)
async def process_output(
    workspace_id: str,
    pid: int,
    ws: InUse,
    offset: Annotated[int, Query(ge=0, description="the byte to start from (a line's next_offset)")] = 0,
    follow: Annotated[bool, Query(description="wait for more output until the process ends")] = False,
) -> ClosingStreamingResponse:
    """Its output from `offset` as NDJSON: `{"stream", "offset", "next_offset", "data"}` lines.

    A `{"dropped": true, ...}` line comes first when output from `offset` is no longer kept
    (the newest 16 MiB are); once the process has ended, the last line is its exit
    (`exit_code`, `signal`, `ended_at`). To resume after a disconnect, ask again with the last
    line's `next_offset`.

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    events = await in_thread(table.output, pid, offset, follow)
    return ClosingStreamingResponse(output_lines(events), media_type="application/x-ndjson")


@router.post(
    "/{pid}/stdin",
    summary="Write to a process's stdin",
    status_code=204,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=errors(*_ONE, (409, "It was started without `stdin`, has closed it, or has exited."), 413),
)
async def write_stdin(workspace_id: str, pid: int, request: Request, mgr: Manager, ws: InUse) -> Response:
    """Send the request body to its stdin (204).

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    await in_thread(table.write_stdin, pid, sync_chunks(request.stream(), mgr.settings.max_upload))
    return Response(status_code=204)


@router.post(
    "/{pid}/stdin/close",
    summary="Close a process's stdin",
    status_code=204,
    responses=errors(*_ONE, (409, "It was started without `stdin`, has closed it, or has exited.")),
)
async def close_stdin(workspace_id: str, pid: int, ws: InUse) -> Response:
    """End its stdin, so that it reads end-of-file (on a terminal: ^D).

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    await in_thread(table.close_stdin, pid)
    return Response(status_code=204)


@router.post(
    "/{pid}/signal",
    summary="Signal a process",
    status_code=204,
    responses=errors(*_ONE, (409, "It has exited."), 413, (422, "An unknown signal, or a body that is not valid.")),
)
async def send_signal(workspace_id: str, pid: int, body: SignalIn, ws: InUse) -> Response:
    """Send a signal to its process group (204).

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    await in_thread(table.signal, pid, body.number)
    return Response(status_code=204)


@router.post(
    "/{pid}/resize",
    summary="Resize a process's terminal",
    status_code=204,
    responses=errors(
        *_ONE, (409, "It runs without a terminal, or has exited."), 413, (422, "A size out of 1-1000, or no size.")
    ),
)
async def resize(workspace_id: str, pid: int, body: TerminalSizeIn, ws: InUse) -> Response:
    """Resize its terminal (204): the program in it is told (SIGWINCH).

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    await in_thread(table.resize, pid, body.to_size())
    return Response(status_code=204)


@router.delete("/{pid}", summary="Kill a process", status_code=204, responses=errors(*_ONE))
async def kill_process(workspace_id: str, pid: int, ws: InUse) -> Response:
    """Kill it and everything in its process group, children included; returns once they are gone (204).

    Its record and output stay readable. Killing one that has already exited is not an error.

    Needs an API key: the workspace's owner's.
    """
    table = await in_thread(ws.processes)
    with contextlib.suppress(Conflict):  # already exited: what DELETE asks for is true
        await in_thread(table.signal, pid, signal.SIGKILL)
    return Response(status_code=204)


def output_lines(events: Iterator[ProcessEvent | None]) -> Iterator[bytes]:
    """Process output events as NDJSON lines, text cut only between UTF-8 characters."""
    return guarded_lines(_output_lines(events), events)


def _output_lines(events: Iterator[ProcessEvent | None]) -> Iterator[bytes]:
    held: ProcessOutput | None = None  # the start of a character whose rest is in the next piece
    for event in events:
        if event is None:
            yield b""  # nothing new: where a client that left is noticed (see ClosingStreamingResponse)
            continue
        if isinstance(event, ProcessOutput):
            if held is not None and held.stream == event.stream:
                event = ProcessOutput(event.stream, held.offset, held.data + event.data)
            elif held is not None:
                yield _output_line(held)
            held = None
            whole = _complete(event.data)
            if whole < len(event.data):
                held = ProcessOutput(event.stream, event.offset + whole, event.data[whole:])
            if whole:
                yield _output_line(ProcessOutput(event.stream, event.offset, event.data[:whole]))
            continue
        if held is not None:
            yield _output_line(held)
            held = None
        if isinstance(event, OutputDropped):
            yield json_line(OutputDroppedEvent(offset=event.offset, resumed_at=event.resumed_at))
        elif isinstance(event, ProcessEnded):
            yield json_line(ProcessExitEvent.of(event))
    if held is not None:
        yield _output_line(held)


def _complete(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the last lead byte (or ASCII)
            needs = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= needs else len(data) - back
    return len(data)


def _output_line(piece: ProcessOutput) -> bytes:
    text = piece.data.decode("utf-8", "replace")
    end = piece.offset + len(piece.data)
    return json_line(ProcessOutputEvent(stream=piece.stream, offset=piece.offset, next_offset=end, data=text))
