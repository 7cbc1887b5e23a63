"""/mcp: the MCP tools over streamable HTTP, in the API's own app and behind its keys.

The endpoint asks what every route asks first (workspaces enabled, else 404; a valid bearer key,
else 401), with the same dependencies, so its refusals are the API's. Each tool call is then a
request to the same app, in-process, bearing the caller's own Authorization header: the route
authenticates it again and answers only with the caller's workspaces.

The SDK's session manager runs stateless: every request is served on its own, with no MCP
session kept between requests, so any replica of the server can serve any request, and no
request can be served under a session that another key opened. There being no session to
push anything to, GET (a stream for the server's own messages) is answered 405.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox.errors import AgentboxError
from agentbox.mcp.server import build_server
from agentbox.web.dependencies import caller_of_request, manager

PATH = "/mcp"
#: The base URL of the tools' in-process requests; never resolved, they do not leave the process.
IN_PROCESS = "http://agentbox"


class MCPEndpoint:
    """The ASGI endpoint at PATH; it serves while `running` (in the app's lifespan)."""

    def __init__(self, max_request: int) -> None:
        self.max_request = max_request
        self._sessions: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self, app: ASGIApp) -> AsyncIterator[None]:
        """Serve requests until the context ends; tool calls go to `app`, the API's app, in-process.

        On leaving, requests in flight are cancelled and the endpoint refuses new ones.
        """
        # Not raising the app's exceptions: it answers them as a 500 with a detail, which the tool reports.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=IN_PROCESS, timeout=None) as api:
            sessions = StreamableHTTPSessionManager(
                build_server(api, forwarded_key),
                stateless=True,
                # The app's own limit (RequestSizeLimit, WORKSPACE_MAX_REQUEST) is the one that holds.
                max_request_body_size=self.max_request,
            )
            async with sessions.run():
                self._sessions = sessions
                try:
                    yield
                finally:
                    self._sessions = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one MCP request (a GET: 405). Raises, for the app's error handlers to answer as the
        API does: NotFound when workspaces are disabled, Unauthorized without a valid key, and
        AgentboxError (500) when the endpoint is not running."""
        request = Request(scope)
        await manager(request)
        await caller_of_request(request)
        if request.method == "GET":
            # Stateless, it never has anything to send on a stream of its own: say so, as the
            # specification allows, rather than hold the connection open for nothing.
            refusal = {"detail": "GET /mcp has no stream to give: this endpoint is stateless, POST each message"}
            await JSONResponse(refusal, status_code=405, headers={"Allow": "POST"})(scope, receive, send)
            return
        if self._sessions is None:
            raise AgentboxError("the MCP endpoint is not running: it runs in the app's lifespan")
        await self._sessions.handle_request(scope, receive, send)


def forwarded_key(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, str]:
    """The Authorization header of the HTTP request that carries this MCP request, for the tool's own request."""
    request = ctx.request
    found = request.headers.get("authorization") if isinstance(request, Request) else None
    return {"Authorization": found} if found else {}
