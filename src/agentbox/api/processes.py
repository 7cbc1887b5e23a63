"""Background process routes: start one, list them, read output by offset, stdin, signals, kill.

The processes live in the workspace (see agentbox.providers.processes): these routes hold no
state, so any server, restarted or not, serves any client that comes back with a PID.
"""

import contextlib
import signal
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from agentbox.api.dependencies import Manager, Owner, in_thread
from agentbox.api.files import sync_chunks
from agentbox.api.ndjson import guarded_lines, json_line
from agentbox.api.streaming import ClosingStreamingResponse
from agentbox.errors import Conflict
from agentbox.process_schemas import (
    OutputDroppedEvent,
    ProcessExitEvent,
    ProcessIn,
    ProcessList,
    ProcessOut,
    ProcessOutputEvent,
    SignalIn,
    TerminalSizeIn,
)
from agentbox.providers.processes import OutputDropped, ProcessEnded, ProcessEvent, ProcessOutput

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/processes", tags=["processes"])


@router.post("", status_code=201, response_model=ProcessOut)
async def start_process(workspace_id: str, body: ProcessIn, mgr: Manager, who: Owner) -> ProcessOut:
    """Start a process in the background and return it, running (201), with its PID in the workspace.

    It runs until it ends or is killed, whatever happens to this request or to the server.
    Errors: 400 when the program cannot be started or the provider has no background
    processes, 404 when the workspace is not yours, 409 when it is not running.
    """
    return ProcessOut.of(await in_thread(mgr.start_process, who, workspace_id, body.to_request()))


@router.get("", response_model=ProcessList)
async def list_processes(workspace_id: str, mgr: Manager, who: Owner) -> ProcessList:
    """Every background process started in the workspace, running or exited."""
    return ProcessList(
        processes=[ProcessOut.of(info) for info in await in_thread(mgr.list_processes, who, workspace_id)]
    )


@router.get("/{pid}", response_model=ProcessOut)
async def get_process(workspace_id: str, pid: int, mgr: Manager, who: Owner) -> ProcessOut:
    """One background process. Errors: 404 for a PID that is not one of them."""
    table = await in_thread(mgr.processes, who, workspace_id)
    return ProcessOut.of(await in_thread(table.get, pid))


@router.get("/{pid}/output", responses={200: {"content": {"application/x-ndjson": {}}}})
async def process_output(
    workspace_id: str,
    pid: int,
    mgr: Manager,
    who: Owner,
    offset: Annotated[int, Query(ge=0, description="the byte to start from (a line's next_offset)")] = 0,
    follow: Annotated[bool, Query(description="wait for more output until the process ends")] = False,
) -> ClosingStreamingResponse:
    """Its output from `offset` as NDJSON: `{"stream", "offset", "next_offset", "data"}` lines.

    A `{"dropped": true, ...}` line comes first when output from `offset` is no longer kept
    (the newest 16 MiB are); once the process has ended, the last line is its exit
    (`exit_code`, `signal`, `ended_at`). To resume after a disconnect, ask again with the last
    line's `next_offset`. Errors: 404 for an unknown PID.
    """
    table = await in_thread(mgr.processes, who, workspace_id)
    events = await in_thread(table.output, pid, offset, follow)
    return ClosingStreamingResponse(output_lines(events), media_type="application/x-ndjson")


@router.post("/{pid}/stdin", status_code=204)
async def write_stdin(workspace_id: str, pid: int, request: Request, mgr: Manager, who: Owner) -> Response:
    """Send the request body to its stdin (204).

    Errors: 409 when it was started without `stdin`, has closed it or has exited.
    """
    table = await in_thread(mgr.processes, who, workspace_id)
    await in_thread(table.write_stdin, pid, sync_chunks(request.stream(), mgr.settings.max_upload))
    return Response(status_code=204)


@router.post("/{pid}/stdin/close", status_code=204)
async def close_stdin(workspace_id: str, pid: int, mgr: Manager, who: Owner) -> Response:
    """End its stdin, so that it reads end-of-file (on a terminal: ^D)."""
    table = await in_thread(mgr.processes, who, workspace_id)
    await in_thread(table.close_stdin, pid)
    return Response(status_code=204)


@router.post("/{pid}/signal", status_code=204)
async def send_signal(workspace_id: str, pid: int, body: SignalIn, mgr: Manager, who: Owner) -> Response:
    """Send a signal to its process group (204). Errors: 409 when it has exited, 422 for an unknown signal."""
    table = await in_thread(mgr.processes, who, workspace_id)
    await in_thread(table.signal, pid, body.number)
    return Response(status_code=204)


@router.post("/{pid}/resize", status_code=204)
async def resize(workspace_id: str, pid: int, body: TerminalSizeIn, mgr: Manager, who: Owner) -> Response:
    """Resize its terminal. Errors: 409 when it runs without one, 422 for a size out of 1-1000."""
    table = await in_thread(mgr.processes, who, workspace_id)
    await in_thread(table.resize, pid, body.to_size())
    return Response(status_code=204)


@router.delete("/{pid}", status_code=204)
async def kill_process(workspace_id: str, pid: int, mgr: Manager, who: Owner) -> Response:
    """Kill it and everything in its process group, children included; returns once they are gone (204).

    Its record and output stay readable. Killing one that has already exited is not an error.
    """
    table = await in_thread(mgr.processes, who, workspace_id)
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
            yield json_line(ProcessExitEvent(exit_code=event.exit_code, signal=event.signal, ended_at=event.ended_at))
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
