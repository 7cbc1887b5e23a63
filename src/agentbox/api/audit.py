"""The audit trail in the API: a middleware that records every call on a workspace, and the route that reads them."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentbox.db.models import utcnow
from agentbox.web.dependencies import Manager, Owner, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.audit import AuditPage, AuditRecordOut
from agentbox.workspaces.audit import AuditLog, Call, summarized

log = logging.getLogger("agentbox.workspaces.audit")

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}/audit", tags=["workspaces"])

_ON_WORKSPACE = re.compile(r"^/api/v1/workspaces/([^/]+)(/.*)?$")
_PREFIX = "/api/v1/workspaces/{workspace_id}"
#: Reads of a workspace's state that touch nothing in it: a dashboard asks them every few seconds,
#: and the trail is of what was done. Left out when they succeed; a refused one is still kept.
_STATUS_READS = frozenset({None, "/", "/usage", "/ports", "/processes"})
#: JSON bodies up to this size are summarized in the trail (bigger ones: only their size). Small: it is
#: held in memory for the whole call, for every call in flight, whoever sends it.
MAX_SUMMARIZED_BODY = 64 << 10


@router.get("", summary="A workspace's audit trail", response_model=AuditPage, responses=errors(404, 422))
async def audit_trail(
    workspace_id: str,
    mgr: Manager,
    who: Owner,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="only records older than this id")] = None,
) -> AuditPage:
    """Every call made on the workspace (commands, processes, tools, sessions, files, previews), newest
    first: who, what, its arguments without file contents or env values, its status and duration.

    Needs an API key: the workspace's owner's; the trail holds only the owner's calls."""
    await in_thread(mgr.get, who, workspace_id)
    log: AuditLog = mgr.audit
    records = await in_thread(log.page, workspace_id, limit, before)
    page = [AuditRecordOut.model_validate(record, from_attributes=True) for record in records]
    return AuditPage(records=page, next_before=page[-1].id if len(page) == limit else None)


class AuditTrail:
    """Records each HTTP request and WebSocket on /api/v1/workspaces/{id}/... once it has ended, when its
    caller was authenticated (the AuditLog keeps it only if that caller owns the workspace)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        on = _ON_WORKSPACE.match(scope["path"]) if scope["type"] in ("http", "websocket") else None
        method = scope.get("method", "WEBSOCKET")
        if on is None or (method == "GET" and on.group(2) == "/audit"):
            await self.app(scope, receive, send)
            return
        started, at = time.monotonic(), utcnow()
        status = 0
        headers = dict(scope.get("headers", []))
        body = bytearray()
        size = 0  # of the whole body; `body` holds it only while it is small enough to summarize
        keep_body = headers.get(b"content-type", b"").startswith(b"application/json")

        async def receiving() -> Message:
            nonlocal size
            message = await receive()
            if keep_body and message["type"] == "http.request":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= MAX_SUMMARIZED_BODY:
                    body.extend(chunk)
                else:
                    body.clear()
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif message["type"] == "websocket.accept":
                status = 101
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            try:
                self._record(scope, on, method, at, status, int((time.monotonic() - started) * 1000), bytes(body), size)
            except Exception:  # the trail must never break the call it describes
                log.exception("recording a call on %s failed", scope["path"])

    @staticmethod
    def _record(
        scope: Scope,
        on: re.Match[str],
        method: str,
        at: datetime,
        status: int,
        duration_ms: int,
        body: bytes,
        size: int,
    ) -> None:
        service = scope["app"].state.service
        manager = service.manager if service is not None else None
        owner = scope.get("state", {}).get("owner")
        status_read = method == "GET" and on.group(2) in _STATUS_READS and 0 < status < 400
        if manager is None or owner is None or status_read:
            return  # nobody authenticated: nothing of theirs goes into anyone's trail
        route = scope.get("route")
        template = getattr(route, "path", _PREFIX + (on.group(2) or ""))
        manager.audit.record(
            Call(
                workspace_id=on.group(1),
                owner=owner,
                at=at,
                action=f"{method} {template.removeprefix(_PREFIX) or '/'}",
                arguments=summarized(_arguments(scope, body, size)),
                status=status or 500,
                duration_ms=duration_ms,
            )
        )


def _arguments(scope: Scope, body: bytes, size: int) -> dict[str, Any]:
    arguments: dict[str, Any] = {k: v for k, v in scope.get("path_params", {}).items() if k != "workspace_id"}
    arguments |= dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    if size:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            arguments |= parsed
        else:
            arguments["body"] = f"<{size} bytes>"
    return arguments
