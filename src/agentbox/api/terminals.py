"""Terminals: a WebSocket onto a background process started with `pty`.

Binary frames carry the terminal's bytes both ways; a text frame `{"cols", "rows"}` resizes it.
The server sends the process's output from `?offset=` (default: all that is kept, so that a
reconnecting client redraws), then a text frame with its exit, and closes.

A browser cannot set an Authorization header on a WebSocket, so besides the bearer header the
socket takes `?token=`: a token for this process's terminal that lives for a minute, minted by
POST .../terminal/token (auth/tokens.py). Revoking the key that minted it ends the terminal too.
"""

import json
from collections.abc import Iterator

import anyio
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from agentbox.errors import AgentboxError, Conflict, Unauthorized
from agentbox.sandbox.process_table import ProcessEnded, ProcessEvent, ProcessOutput, ProcessTable
from agentbox.web.dependencies import Manager, Who, in_thread
from agentbox.web.openapi import errors
from agentbox.web.tokens import bearer_caller, token_caller
from agentbox.wire.processes import ProcessExitEvent, TerminalSizeIn

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/processes/{pid}/terminal", tags=["processes"])

TOKEN_SECONDS = 60
TOKEN_USE = "terminal"
_END = object()  # what next() gives once the output has ended (None means "nothing new")


class TerminalToken(BaseModel):
    token: str = Field(description="for `?token=` on the terminal's WebSocket")
    expires_in: int = Field(description="seconds it is accepted for")


@router.post(
    "/token",
    summary="A token for a process's terminal socket",
    response_model=TerminalToken,
    responses=errors(404, 422),
)
async def terminal_token(workspace_id: str, pid: int, request: Request, mgr: Manager, who: Who) -> TerminalToken:
    """A token for `?token=` on this process's terminal socket (a WebSocket: see this document's
    description), valid for a minute; for browsers, which cannot send the socket an Authorization header.

    Needs an API key: the workspace's owner's. The token works while that key does.
    """
    await in_thread(mgr.get, who.owner, workspace_id)  # 404 unless it is the caller's
    token, _ = request.app.state.service.tokens.mint(who, TOKEN_USE, TOKEN_SECONDS, ws=workspace_id, pid=pid)
    return TerminalToken(token=token, expires_in=TOKEN_SECONDS)


@router.websocket("")
async def terminal(websocket: WebSocket, workspace_id: str, pid: int, offset: int = 0, token: str = "") -> None:
    """The terminal of process `pid` (see the module's docstring). Refused with the HTTP status of the
    error (401, 404, 409 for a process without a terminal) before the upgrade."""
    service = websocket.app.state.service
    try:
        if service.manager is None:
            raise Unauthorized("agent workspaces are disabled on this server")
        if websocket.headers.get("authorization"):
            owner = (await bearer_caller(websocket)).owner
        else:
            owner = await _token_owner(websocket, token, workspace_id, pid)
        table: ProcessTable = await in_thread(lambda: service.manager.use(owner, workspace_id).processes())
        info = await in_thread(table.get, pid)
        if info.pty is None:
            raise Conflict(f"process {pid} has no terminal: start it with `pty` to attach to it")
        events = await in_thread(table.output, pid, max(0, offset), True)
    except AgentboxError as exc:
        await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code))
        return
    await websocket.accept()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_send_output, websocket, events)
        await _receive_input(websocket, table, pid)
        tasks.cancel_scope.cancel()


async def _send_output(websocket: WebSocket, events: Iterator[ProcessEvent | None]) -> None:
    while True:
        # Abandoned on cancel: the helper's keep-alive (a None) wakes the thread within seconds and
        # the dropped generator then closes its call.
        try:
            event = await anyio.to_thread.run_sync(next, events, _END, abandon_on_cancel=True)
        except AgentboxError as exc:  # the sandbox went away: say so rather than drop the line
            await websocket.send_text(json.dumps({"error": exc.detail}))
            await websocket.close(code=1011)
            return
        if event is _END:
            break
        if isinstance(event, ProcessOutput):
            await websocket.send_bytes(event.data)
        elif isinstance(event, ProcessEnded):
            ended = ProcessExitEvent.of(event)
            await websocket.send_text(ended.model_dump_json())
            break
    await websocket.close()


async def _receive_input(websocket: WebSocket, table: ProcessTable, pid: int) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            if message.get("bytes"):
                await in_thread(table.write_stdin, pid, [message["bytes"]])
            elif message.get("text"):
                size = TerminalSizeIn.model_validate(json.loads(message["text"]))
                await in_thread(table.resize, pid, size.to_size())
        except (ValueError, ValidationError) as exc:  # the socket stays; the frame is refused
            await websocket.send_text(json.dumps({"error": f'a text frame must be {{"cols", "rows"}}: {exc}'}))
        except Conflict:
            return  # it has ended: the output side says how and closes


async def _token_owner(websocket: WebSocket, token: str, workspace_id: str, pid: int) -> str:
    """The owner a terminal token was minted for, if it is valid for this process."""
    found = await token_caller(websocket, token, TOKEN_USE, ws=workspace_id, pid=pid)
    if found is None:
        raise Unauthorized(
            "the terminal needs `Authorization: Bearer <key>` or a valid `?token=` "
            "(POST .../terminal/token mints one; it lasts a minute)"
        )
    return found.owner
