"""Shell session routes: open one, run commands in it one after another, list them, close one.

A session keeps its shell's state (directory, variables, functions) between commands; it lives
in the workspace as a background process (see agentbox.sessions).
"""

from fastapi import APIRouter, Response

from agentbox.api.dependencies import Manager, Owner, in_thread
from agentbox.errors import NotFound
from agentbox.process_schemas import SessionIn, SessionList, SessionOut, SessionRunIn, SessionRunOut

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/sessions", tags=["sessions"])


@router.post("", status_code=201, response_model=SessionOut)
async def open_session(workspace_id: str, body: SessionIn, mgr: Manager, who: Owner) -> SessionOut:
    """Open a shell session (bash) in `cwd` (201).

    Errors: 400 when the workspace's image has no bash or its provider has no background
    processes, 404 when the workspace is not yours, 409 when it is not running.
    """
    return SessionOut.of(await in_thread(mgr.open_session, who, workspace_id, body.cwd, body.env))


@router.get("", response_model=SessionList)
async def list_sessions(workspace_id: str, mgr: Manager, who: Owner) -> SessionList:
    """The workspace's open sessions."""
    found = await in_thread(mgr.list_sessions, who, workspace_id)
    return SessionList(sessions=[SessionOut.of(info) for info in found])


@router.post("/{session_id}/run", response_model=SessionRunOut)
async def run(workspace_id: str, session_id: str, body: SessionRunIn, mgr: Manager, who: Owner) -> SessionRunOut:
    """Run shell text in the session and return its output once it is done.

    It sees what earlier commands left: the directory, exported and plain variables, functions.
    Past `timeout` it is interrupted as by ^C and the session stays usable (`timed_out`).
    Its stdin is empty (/dev/null). Errors: 404 for an unknown session, 409 when it has ended or
    is running another command.
    """
    found = await in_thread(mgr.run_in_session, who, workspace_id, _pid(session_id), body.command, body.timeout)
    return SessionRunOut(**vars(found))


@router.delete("/{session_id}", status_code=204)
async def close_session(workspace_id: str, session_id: str, mgr: Manager, who: Owner) -> Response:
    """End the session's shell and what it started (204). Errors: 404 for an unknown session."""
    await in_thread(mgr.close_session, who, workspace_id, _pid(session_id))
    return Response(status_code=204)


def _pid(session_id: str) -> int:
    if not session_id.isdigit() or len(session_id) > 10:
        raise NotFound(f"no session {session_id!r}: session ids are numbers; list them with GET .../sessions")
    return int(session_id)
