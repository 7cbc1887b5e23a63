"""Previews' plumbing shared by the faces: the preview hosts (`{port}-{id}.{domain}`, each an origin
of its own), preview tokens checked, E2B's traffic header, and the path and query an app gets.

The routes that hand out and serve previews are in api/ports.py; E2B's sandbox URLs (e2b_api/envd.py)
use the same hosts and checks.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl, urlencode

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox.auth.tokens import TRAFFIC, Tokens
from agentbox.db.models import Workspace
from agentbox.errors import AgentboxError, Forbidden
from agentbox.sandbox.runtime import PortConnection
from agentbox.web.dependencies import in_thread
from agentbox.web.proxy import PREVIEW_COOKIE, PREVIEW_HOST, Connect, proxy_http, request_host
from agentbox.web.tokens import bound_caller, token_caller
from agentbox.web.websocket_relay import caller_of, proxy_websocket
from agentbox.wire.domain import Status
from agentbox.workspaces.manager import WorkspaceManager

#: A preview URL's life when the request names none (MAX_SECONDS the longest).
DEFAULT_SECONDS = 3600
#: Where previews have origins of their own when WORKSPACE_PREVIEW_DOMAIN is not set (RFC 6761:
#: browsers resolve `*.localhost` to the loopback address themselves).
LOCAL_PREVIEW_DOMAIN = "localhost"
PREVIEW_USE = "preview"


async def preview_of(
    connection: Request | WebSocket, token: str, host: tuple[str, int] | None = None
) -> tuple[Connect, int, str]:
    """Where a preview token leads: (how to connect there, the port, the workspace). Forbidden when it
    is not valid (for the workspace and port of `host`, in the host form)."""
    service = connection.app.state.service
    if service.manager is None:
        raise Forbidden("agent workspaces are disabled on this server: set ENABLE_AGENT_WORKSPACES=true")
    claims = Tokens.claims(token)
    workspace_id, port = host or (claims.get("ws"), claims.get("port"))
    found = await token_caller(connection, token, PREVIEW_USE, ws=workspace_id, port=port)
    if found is None or not isinstance(workspace_id, str) or not isinstance(port, int):
        raise Forbidden(
            "this preview link is not valid here, has expired, or its key was revoked: ask for a new one with "
            "GET /api/v1/workspaces/{id}/ports/{port}/url"
        )
    return connect_of(service.manager, found.owner, workspace_id, port), port, workspace_id


#: The header that opens the ports of a sandbox made with E2B's `allowPublicTraffic: false`.
TRAFFIC_HEADER = "e2b-traffic-access-token"


def open_workspace(connection: Request | WebSocket, workspace_id: str) -> Workspace | None:
    """The workspace whose ports a request without a preview token may reach: one whose ports are
    public, or one its traffic token opens (E2B's sandbox URLs), woken first if it sleeps (E2B's
    auto-resume). None otherwise."""
    service = connection.app.state.service
    manager: WorkspaceManager | None = service.manager
    workspace = manager.lookup(workspace_id) if manager is not None else None
    if manager is None or workspace is None:
        return None
    presented = connection.headers.get(TRAFFIC_HEADER, "")
    opened = workspace.public_ports or bound_caller(connection, presented, TRAFFIC, workspace) is not None
    return manager.wake(workspace) if opened else None


def _open_port(connection: Request | WebSocket, workspace_id: str, port: int) -> Connect | None:
    workspace = open_workspace(connection, workspace_id)
    if workspace is None or workspace.status != Status.RUNNING:
        return None
    return connect_of(connection.app.state.service.manager, workspace.owner, workspace.id, port)


def connect_of(mgr: WorkspaceManager, owner: str, workspace_id: str, port: int) -> Connect:
    """Connections to `port` of the owner's workspace, sent the Host its row asks (`request_host`)."""

    def connect() -> tuple[PortConnection, str]:
        handle = mgr.use(owner, workspace_id)
        return handle.connect(port), request_host(handle.workspace.request_host, port)

    return connect


def target_of(connection: Request | WebSocket, prefix: str) -> str:
    """The path and query the workspace's server gets: what follows `prefix`, as the client sent it."""
    raw: bytes = connection.scope.get("raw_path") or connection.scope["path"].encode()
    path = raw.decode("latin-1")[len(prefix) :] or "/"
    query = connection.scope.get("query_string", b"").decode("latin-1")
    query = "&".join(p for p in query.split("&") if p and p.split("=", 1)[0] != PREVIEW_COOKIE)  # agentbox's own
    return f"{path}?{query}" if query else path


def preview_host_pattern(domain: str) -> re.Pattern[str]:
    """`{port}-{id}.{domain}` (any port after it); `*.localhost` when `domain` is empty."""
    name = (domain or LOCAL_PREVIEW_DOMAIN).split(":")[0]
    return re.compile(rf"^(\d{{1,5}})-(ws-[0-9a-f]+)\.{re.escape(name)}(:\d+)?$", re.I)


class PreviewHosts:
    """Serves `{port}-{id}.{WORKSPACE_PREVIEW_DOMAIN}` hosts (`*.localhost` when it is not set) as
    previews, each the app's own origin; passes every other host on."""

    def __init__(self, app: ASGIApp, domain: str) -> None:
        self.app = app
        self.pattern = preview_host_pattern(domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        found = self.pattern.match(host) if scope["type"] in ("http", "websocket") else None
        if found is None:
            await self.app(scope, receive, send)
            return
        target = (int(found.group(1)), found.group(2).lower())
        scope = {**scope, PREVIEW_HOST: target}  # the app's own origin (proxy.py)
        if scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send), target)
        else:
            response = await self._http(Request(scope, receive), target)
            await response(scope, receive, send)

    async def _http(self, request: Request, target: tuple[int, str]) -> Response:
        try:
            return await self._answer(request, target)
        except AgentboxError as exc:  # out here, past the app's own error handlers
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    async def _answer(self, request: Request, target: tuple[int, str]) -> Response:
        port, workspace_id = target
        offered = request.query_params.get(PREVIEW_COOKIE)
        token = offered or request.cookies.get(PREVIEW_COOKIE, "")
        open_port = None if token else await in_thread(_open_port, request, workspace_id, port)
        connect = open_port or (await preview_of(request, token, (workspace_id, port)))[0]
        if offered:  # once in the query: kept in a cookie of this host, and the URL made clean
            query = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != PREVIEW_COOKIE])
            clean = request.url.replace(query=query)
            answer = RedirectResponse(str(clean), status_code=307)
            expires = Tokens.claims(token).get("exp")  # verified by preview_of: an int
            max_age = max(expires - int(time.time()), 0) if isinstance(expires, int) else 0
            # Secure behind https: the scheme uvicorn saw, or X-Forwarded-Proto from a proxy it trusts
            # (FORWARDED_ALLOW_IPS: by default the loopback address alone).
            secure = request.url.scheme == "https"
            answer.set_cookie(PREVIEW_COOKIE, token, max_age=max_age, httponly=True, samesite="lax", secure=secure)
            return answer
        return await proxy_http(request, connect, target_of(request, ""), "")

    async def _websocket(self, websocket: WebSocket, target: tuple[int, str]) -> None:
        port, workspace_id = target
        token = websocket.query_params.get(PREVIEW_COOKIE) or websocket.cookies.get(PREVIEW_COOKIE, "")
        try:
            open_port = None if token else await in_thread(_open_port, websocket, workspace_id, port)
            connect = open_port or (await preview_of(websocket, token, (workspace_id, port)))[0]
        except AgentboxError as exc:
            await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code))
            return
        await proxy_websocket(websocket, connect, target_of(websocket, ""), port, workspace_id, caller_of(websocket))
