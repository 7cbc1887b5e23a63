"""Port previews: a server listening inside a workspace, reached through agentbox, HTTP and WebSocket alike.

Three ways in, one way through (the workspace's channel, so no route into its network is
needed and `"network": "none"` workspaces have previews too):

- `http(s)://{port}-{id}.{domain}/...` for browsers: the app on an origin of its own, at the root
  of its own host (so its absolute links work). The domain is WORKSPACE_PREVIEW_DOMAIN, or, when
  that is not set, `localhost` with the server's port: browsers resolve every `*.localhost` name
  to this machine, so previews have their own origins on one machine with no DNS set up. The token
  (GET .../ports/{port}/url: it names the workspace and port, and expires) comes once as
  `?agentbox_preview=` and is then kept in a cookie for that host only (`Secure` when the
  request came over https);
- `/api/v1/workspaces/{id}/ports/{port}/...` for API clients, with their bearer key, and
  `/preview/{token}/...` for clients without wildcard names: both on agentbox's own origin, so
  the app's answers are shown there as an opaque origin (see proxy.py).
"""

from __future__ import annotations

import functools
import re
import time
from typing import Annotated
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import Field
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox.api.dependencies import Manager, Owner, Who, in_thread
from agentbox.api.openapi import IN_SANDBOX, errors
from agentbox.api.proxy import PREVIEW_COOKIE, PREVIEW_HOST, Connect, proxy_http
from agentbox.api.tokens import bearer_caller, bound_caller, token_caller
from agentbox.api.websocket_relay import caller_of, proxy_websocket
from agentbox.auth.tokens import Tokens
from agentbox.e2b_api import access
from agentbox.errors import AgentboxError, Forbidden, NotFound, Unprocessable
from agentbox.manager import WorkspaceManager
from agentbox.models import Status, Workspace
from agentbox.schemas import MAX_SECONDS, ListeningPorts, PreviewURL

router = APIRouter(tags=["previews"])

Port = Annotated[int, Field(ge=1, le=65535)]
_PREFIX = "/api/v1/workspaces/{workspace_id}/ports/{port}"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: A preview URL's life when the request names none (MAX_SECONDS the longest).
DEFAULT_SECONDS = 3600
#: Where previews have origins of their own when WORKSPACE_PREVIEW_DOMAIN is not set (RFC 6761:
#: browsers resolve `*.localhost` to the loopback address themselves).
LOCAL_PREVIEW_DOMAIN = "localhost"
PREVIEW_USE = "preview"


@router.get(
    "/api/v1/workspaces/{workspace_id}/ports",
    summary="Ports listening in a workspace",
    response_model=ListeningPorts,
    responses=errors(*IN_SANDBOX),
)
async def listening_ports(workspace_id: str, mgr: Manager, who: Owner) -> ListeningPorts:
    """The TCP ports something listens on inside the workspace: what a preview can reach.

    Needs an API key: the workspace's owner's.
    """
    return ListeningPorts(ports=await in_thread(mgr.listening_ports, who, workspace_id))


@router.get(_PREFIX + "/url", summary="A preview URL for a port", response_model=PreviewURL, responses=errors(404, 422))
async def preview_url(
    workspace_id: str,
    port: Port,
    request: Request,
    mgr: Manager,
    who: Who,
    expires_in: Annotated[int, Query(ge=60, le=MAX_SECONDS, description="seconds the URL works")] = DEFAULT_SECONDS,
) -> PreviewURL:
    """A URL a browser can open to reach the server on `port` in the workspace, without an API key.

    `url` is the app on an origin of its own: `{port}-{id}.{WORKSPACE_PREVIEW_DOMAIN}`, or
    `{port}-{id}.localhost:{this server's port}` when no domain is set (browsers resolve
    `*.localhost` to this machine). `path_url` works without such names, on this server's own
    origin, where the app's pages are sandboxed (no cookies, storage or service workers).
    Anyone with the URL reaches that port until it expires; removing the API key that asked for it
    revokes it. (A GET of the app's own path /url through the API form is this endpoint: use a
    preview URL for that one.)

    Needs an API key: the workspace's owner's. The URL works while that key does.
    """
    await in_thread(mgr.get, who.owner, workspace_id)
    token, expires = request.app.state.service.tokens.mint(who, PREVIEW_USE, expires_in, ws=workspace_id, port=port)
    path_url = f"{str(request.base_url).rstrip('/')}/preview/{token}/"
    domain = mgr.settings.preview_domain
    if not domain:
        domain = LOCAL_PREVIEW_DOMAIN + (f":{request.url.port}" if request.url.port else "")
    query = urlencode({PREVIEW_COOKIE: token})
    url = f"{request.url.scheme}://{port}-{workspace_id}.{domain}/?{query}"
    return PreviewURL(url=url, path_url=path_url, expires_at=expires)


# Not in the OpenAPI schema: one path under seven methods, whose answers are the workspace's server's own
# (listed with why in the document's description: openapi.UNDOCUMENTED).
@router.api_route(_PREFIX + "/{path:path}", methods=_METHODS, include_in_schema=False)
async def through_api(workspace_id: str, port: Port, path: str, request: Request, mgr: Manager, who: Owner) -> Response:
    """Send this request to the server on `port` in the workspace (at `/{path}`, with the query) and
    give its answer, shown as an opaque origin (see proxy.py). The API key is not passed on.

    Errors: 502 when nothing listens on the port, 504 when the server does not start answering
    within 60 s, 404 when the workspace is not yours, 409 when it is not running.
    """
    prefix = _PREFIX.format(workspace_id=workspace_id, port=port)
    return await proxy_http(request, _connect(mgr, who, workspace_id, port), target_of(request, prefix), prefix, port)


@router.websocket(_PREFIX + "/{path:path}")
async def websocket_through_api(websocket: WebSocket, workspace_id: str, port: int, path: str) -> None:
    """A WebSocket onto the server on `port`, with `Authorization: Bearer <key>`."""
    service = websocket.app.state.service
    try:
        if service.manager is None:
            raise NotFound("agent workspaces are disabled on this server: set ENABLE_AGENT_WORKSPACES=true")
        if not 1 <= port <= 65535:
            raise Unprocessable(f"port {port}: a port is a number from 1 to 65535")
        owner = (await bearer_caller(websocket)).owner
    except AgentboxError as exc:
        await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code))
        return
    prefix = _PREFIX.format(workspace_id=workspace_id, port=port)
    connect = _connect(service.manager, owner, workspace_id, port)
    await proxy_websocket(
        websocket, connect, target_of(websocket, prefix), port, workspace_id, caller_of(websocket, owner)
    )


@router.api_route("/preview/{token}/{path:path}", methods=_METHODS, include_in_schema=False)
async def through_preview(token: str, path: str, request: Request) -> Response:
    try:
        connect, port, _ = await _preview(request, token)
    except AgentboxError as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    # No X-Forwarded-Prefix: this one carries the token, which the app never sees.
    return await proxy_http(request, connect, target_of(request, f"/preview/{token}"), "", port)


@router.websocket("/preview/{token}/{path:path}")
async def websocket_through_preview(websocket: WebSocket, token: str, path: str) -> None:
    try:
        connect, port, workspace_id = await _preview(websocket, token)
    except AgentboxError as exc:
        await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code))
        return
    target = target_of(websocket, f"/preview/{token}")
    await proxy_websocket(websocket, connect, target, port, workspace_id, caller_of(websocket))


async def _preview(
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
    return _connect(service.manager, found.owner, workspace_id, port), port, workspace_id


#: The header that opens the ports of a sandbox made with E2B's `allowPublicTraffic: false`.
TRAFFIC_HEADER = "e2b-traffic-access-token"


def open_workspace(connection: Request | WebSocket, workspace_id: str) -> Workspace | None:
    """The workspace whose ports a request without a preview token may reach: one whose ports are
    public, or one its traffic token opens (E2B's sandbox URLs), woken first if it sleeps (E2B's
    auto-resume). None otherwise."""
    service = connection.app.state.service
    manager: WorkspaceManager | None = service.manager
    workspace = manager.store.get(workspace_id) if manager is not None else None
    if manager is None or workspace is None:
        return None
    presented = connection.headers.get(TRAFFIC_HEADER, "")
    opened = workspace.public_ports or bound_caller(connection, presented, access.TRAFFIC, workspace) is not None
    return manager.wake(workspace) if opened else None


def _open_port(connection: Request | WebSocket, workspace_id: str, port: int) -> Connect | None:
    workspace = open_workspace(connection, workspace_id)
    if workspace is None or workspace.status != Status.RUNNING:
        return None
    return _connect(connection.app.state.service.manager, workspace.owner, workspace.id, port)


def _connect(mgr: WorkspaceManager, owner: str, workspace_id: str, port: int) -> Connect:
    return functools.partial(mgr.connect, owner, workspace_id, port)


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
        connect = open_port or (await _preview(request, token, (workspace_id, port)))[0]
        if offered:  # once in the query: kept in a cookie of this host, and the URL made clean
            query = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != PREVIEW_COOKIE])
            clean = request.url.replace(query=query)
            answer = RedirectResponse(str(clean), status_code=307)
            expires = Tokens.claims(token).get("exp")  # verified by _preview: an int
            max_age = max(expires - int(time.time()), 0) if isinstance(expires, int) else 0
            # Secure behind https: the scheme uvicorn saw, or X-Forwarded-Proto from a proxy it trusts
            # (FORWARDED_ALLOW_IPS: by default the loopback address alone).
            secure = request.url.scheme == "https"
            answer.set_cookie(PREVIEW_COOKIE, token, max_age=max_age, httponly=True, samesite="lax", secure=secure)
            return answer
        return await proxy_http(request, connect, target_of(request, ""), "", port)

    async def _websocket(self, websocket: WebSocket, target: tuple[int, str]) -> None:
        port, workspace_id = target
        token = websocket.query_params.get(PREVIEW_COOKIE) or websocket.cookies.get(PREVIEW_COOKIE, "")
        try:
            open_port = None if token else await in_thread(_open_port, websocket, workspace_id, port)
            connect = open_port or (await _preview(websocket, token, (workspace_id, port)))[0]
        except AgentboxError as exc:
            await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code))
            return
        await proxy_websocket(websocket, connect, target_of(websocket, ""), port, workspace_id, caller_of(websocket))
