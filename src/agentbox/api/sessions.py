"""Shell session routes: open one, run commands in it one after another, list them, close one.

A session keeps its shell's state (directory, variables, functions) between commands; it lives
in the workspace as a background process (see agentbox.workspaces.sessions).
"""

from fastapi import APIRouter, Response

from agentbox.errors import NotFound
from agentbox.web.dependencies import InUse, in_thread
from agentbox.web.openapi import IN_SANDBOX, errors
from agentbox.wire.processes import SessionIn, SessionList, SessionOut, SessionRunIn, SessionRunOut

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/sessions", tags=["sessions"])

_NO_SESSION = (404, "No workspace of yours with this id, or no open session with this id in it.")


@router.post(
    "",
    summary="Open a shell session",
    status_code=201,
    response_model=SessionOut,
    responses=errors(
        (
            400,
            "The workspace's image has no bash, `cwd` is not a directory, or its provider has no background processes.",
        ),
        *IN_SANDBOX,
        413,
        422,
    ),
)
async def open_session(workspace_id: str, body: SessionIn, ws: InUse) -> SessionOut:
    """Open a shell session (bash) in `cwd` (201).

    Needs an API key: the workspace's owner's.
    """
    return SessionOut.of(await in_thread(ws.open_session, body.cwd, body.env))


@router.get(
    "",
    summary="List shell sessions",
    response_model=SessionList,
    responses=errors((400, "The workspace's provider has no background processes."), *IN_SANDBOX),
)
async def list_sessions(workspace_id: str, ws: InUse) -> SessionList:
    """The workspace's open shell sessions: each one's id, where it started, and whether its shell runs.

    Needs an API key: the workspace's owner's.
    """
    found = await in_thread(ws.list_sessions)
    return SessionList(sessions=[SessionOut.of(info) for info in found])


@router.post(
    "/{session_id}/run",
    summary="Run shell text in a session",
    response_model=SessionRunOut,
    responses=errors(
        *IN_SANDBOX,
        _NO_SESSION,
        (409, "The workspace is not running, or the session has ended or is running another command."),
        413,
        422,
    ),
)
async def run(workspace_id: str, session_id: str, body: SessionRunIn, ws: InUse) -> SessionRunOut:
    """Run shell text in the session and return its output once it is done.

    It sees what earlier commands left: the directory, exported and plain variables, functions.
    Past `timeout` it is interrupted as by ^C and the session stays usable (`timed_out`).
    Its stdin is empty (/dev/null).

    Needs an API key: the workspace's owner's.
    """
    found = await in_thread(ws.run_in_session, _pid(session_id), body.command, body.timeout)
    return SessionRunOut(**vars(found))


@router.delete(
    "/{session_id}", summary="Close a shell session", status_code=204, responses=errors(*IN_SANDBOX, _NO_SESSION)
)
async def close_session(workspace_id: str, session_id: str, ws: InUse) -> Response:
    """End the session's shell and what it started (204).

    Needs an API key: the workspace's owner's.
    """
    await in_thread(ws.close_session, _pid(session_id))
    return Response(status_code=204)


def _pid(session_id: str) -> int:
    if not session_id.isdigit() or len(session_id) > 10:
        raise NotFound(f"no session {session_id!r}: session ids are numbers; list them with GET .../sessions")
    return int(session_id)
