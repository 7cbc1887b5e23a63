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

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.responses import Response

from agentbox.errors import AgentboxError, NotFound, Unprocessable
from agentbox.web.dependencies import LookedAt, Manager, Owner, Who, in_thread
from agentbox.web.openapi import IN_SANDBOX, errors
from agentbox.web.previews import DEFAULT_SECONDS, LOCAL_PREVIEW_DOMAIN, PREVIEW_USE, connect_of, preview_of, target_of
from agentbox.web.proxy import PREVIEW_COOKIE, proxy_http
from agentbox.web.tokens import bearer_caller
from agentbox.web.websocket_relay import caller_of, proxy_websocket
from agentbox.wire.common import MAX_SECONDS
from agentbox.wire.ports import ListeningPorts, PreviewURL

router = APIRouter(tags=["previews"])

Port = Annotated[int, Field(ge=1, le=65535)]
_PREFIX = "/api/v1/workspaces/{workspace_id}/ports/{port}"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.get(
    "/api/v1/workspaces/{workspace_id}/ports",
    summary="Ports listening in a workspace",
    response_model=ListeningPorts,
    responses=errors(*IN_SANDBOX),
)
async def listening_ports(workspace_id: str, ws: LookedAt) -> ListeningPorts:
    """The TCP ports something listens on inside the workspace: what a preview can reach.

    Needs an API key: the workspace's owner's.
    """
    return ListeningPorts(ports=await in_thread(ws.listening_ports))


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
    return await proxy_http(request, connect_of(mgr, who, workspace_id, port), target_of(request, prefix), prefix)


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
    connect = connect_of(service.manager, owner, workspace_id, port)
    await proxy_websocket(
        websocket, connect, target_of(websocket, prefix), port, workspace_id, caller_of(websocket, owner)
    )


@router.api_route("/preview/{token}/{path:path}", methods=_METHODS, include_in_schema=False)
async def through_preview(token: str, path: str, request: Request) -> Response:
    try:
        connect, _, _ = await preview_of(request, token)
    except AgentboxError as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    # No X-Forwarded-Prefix: this one carries the token, which the app never sees.
    return await proxy_http(request, connect, target_of(request, f"/preview/{token}"), "")


@router.websocket("/preview/{token}/{path:path}")
async def websocket_through_preview(websocket: WebSocket, token: str, path: str) -> None:
    try:
        connect, port, workspace_id = await preview_of(websocket, token)
    except AgentboxError as exc:
        await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code))
        return
    target = target_of(websocket, f"/preview/{token}")
    await proxy_websocket(websocket, connect, target, port, workspace_id, caller_of(websocket))
