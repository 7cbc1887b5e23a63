"""Command routes: run a command in a workspace, whole (exec) or streamed as NDJSON (exec/stream)."""

import json
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response

from agentbox.sandbox.runtime import ExecEvent, ExecResult, Exit, OutputLimit, TextDecoder
from agentbox.web.dependencies import InUse, Manager, in_thread
from agentbox.web.ndjson import guarded_lines, json_line
from agentbox.web.openapi import IN_SANDBOX, errors, ndjson
from agentbox.web.streaming import ClosingStreamingResponse
from agentbox.wire.commands import ExecIn, ExecOut, ExitEvent, OutputEvent

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}", tags=["commands"])

TEXT_PIECE = 1 << 16
_NO_CWD = (400, "`cwd` is not a directory in the workspace.")


@router.post("/exec", summary="Run a command", response_model=ExecOut, responses=errors(_NO_CWD, *IN_SANDBOX, 413, 422))
async def exec_command(workspace_id: str, body: ExecIn, ws: InUse) -> Response:
    """Run a command to its end and return its exit code and output (each stream capped at
    WORKSPACE_EXEC_OUTPUT_LIMIT, and flagged if cut).

    A command that runs past its `timeout` is killed and answered with `timed_out` and exit
    code 124. A command that cannot be started (no such program) exits 127, as in a shell.

    Needs an API key: the workspace's owner's.
    """
    result = await in_thread(ws.exec, body.to_command())
    if len(result.stdout) + len(result.stderr) <= TEXT_PIECE:
        return Response(b"".join(exec_json(result)), media_type="application/json")
    # Encoded piece by piece: as one JSON document, 10 MiB of control characters would take 60.
    return ClosingStreamingResponse(exec_json(result), media_type="application/json")


def exec_json(result: ExecResult) -> Iterator[bytes]:
    """`result` as the JSON of an ExecOut, in pieces of about TEXT_PIECE bytes."""
    pending = bytearray(b"{")
    for position, (name, value) in enumerate(vars(result).items()):
        pending += (b"," if position else b"") + json.dumps(name).encode() + b":"
        if not isinstance(value, str):
            pending += json.dumps(value).encode()
            continue
        pending += b'"'
        for start in range(0, len(value), TEXT_PIECE):
            pending += json.dumps(value[start : start + TEXT_PIECE], ensure_ascii=False)[1:-1].encode()
            if len(pending) >= TEXT_PIECE:
                yield bytes(pending)
                pending.clear()
        pending += b'"'
    yield bytes(pending + b"}")


@router.post(
    "/exec/stream",
    summary="Run a command, its output streamed",
    response_class=ClosingStreamingResponse,
    responses=ndjson("ExecStreamEvent", "The command's output as it comes, then how it ended.")
    | errors(_NO_CWD, *IN_SANDBOX, 413, 422),
)
async def exec_stream(workspace_id: str, body: ExecIn, mgr: Manager, ws: InUse) -> ClosingStreamingResponse:
    """Run a command and stream its output as it comes, as NDJSON.

    Each line is `{"stream": "stdout"|"stderr", "data": ...}`; the last is the exit
    (`exit_code`, `timed_out`, `duration_ms`, `signal`, `stdout_truncated`,
    `stderr_truncated`), or `{"error": ...}` if the command could not go on. The errors listed
    come before the stream starts.

    Needs an API key: the workspace's owner's.
    """
    events = await in_thread(ws.exec_stream, body.to_command())
    return ClosingStreamingResponse(
        ndjson_lines(events, mgr.settings.exec_output_limit), media_type="application/x-ndjson"
    )


def ndjson_lines(events: Iterator[ExecEvent], limit: int) -> Iterator[bytes]:
    """Exec events as NDJSON lines; output past `limit` per stream is dropped and flagged."""
    return guarded_lines(_exec_lines(events, limit), events)


def _exec_lines(events: Iterator[ExecEvent], limit: int) -> Iterator[bytes]:
    decoders: dict[Literal["stdout", "stderr"], TextDecoder] = {"stdout": TextDecoder(), "stderr": TextDecoder()}
    kept = OutputLimit(limit)
    for event in events:
        if isinstance(event, Exit):
            for stream, decoder in decoders.items():
                if tail := decoder.decode(b"", final=True):
                    yield json_line(OutputEvent(stream=stream, data=tail))
            yield json_line(
                ExitEvent(
                    exit_code=event.exit_code,
                    timed_out=event.timed_out,
                    duration_ms=event.duration_ms,
                    signal=event.signal,
                    stdout_truncated=kept.truncated["stdout"],
                    stderr_truncated=kept.truncated["stderr"],
                )
            )
        elif text := decoders[event.stream].decode(kept.take(event)):
            yield json_line(OutputEvent(stream=event.stream, data=text))
