"""The ASGI app: its lifespan (the service), its routers, its error handlers and its request-size limit.

Route handlers are thin: parse, authenticate, call the manager in a worker thread, shape
the answer. Every error leaves as JSON with a `detail`.
"""

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentbox.api import (
    audit,
    commands,
    dashboard,
    files,
    github,
    keys,
    ports,
    processes,
    sessions,
    snapshots,
    templates,
    terminals,
    tools,
    vault,
    volumes,
    workspaces,
)
from agentbox.config import Settings
from agentbox.e2b_api import control as e2b_control
from agentbox.e2b_api import envd as e2b_envd
from agentbox.e2b_api import metrics as e2b_metrics
from agentbox.e2b_api import secrets as e2b_secrets
from agentbox.e2b_api import snapshots as e2b_snapshots
from agentbox.e2b_api import templates as e2b_templates
from agentbox.e2b_api import volumes as e2b_volumes
from agentbox.errors import AgentboxError
from agentbox.mcp import http as mcp_http  # a module, not its names: agentbox.mcp.http imports api.dependencies
from agentbox.server import system
from agentbox.server.service import Service
from agentbox.web import openapi, previews
from agentbox.web.dependencies import in_thread
from agentbox.web.limits import RateLimits
from agentbox.web.revocations import EndOnRevocation, Revocations

log = logging.getLogger("agentbox.api")

#: Requests served at once in worker threads (blocking manager calls, streams).
WORKER_THREADS = 400


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The ASGI app. `service` may be given already started; either way the app closes it at shutdown.

    (At shutdown, not after the server returns: uvicorn re-raises the SIGTERM it handled, so
    nothing after `uvicorn.run` would run.)
    """

    mcp = mcp_http.MCPEndpoint(settings.max_request)
    revocations = Revocations()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A followed output stream holds a worker thread while it waits; anyio's default of 40
        # would let 40 followers stall every other request.
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        for name in ("uvicorn.access", "uvicorn.error"):  # configured by now: the filter stays
            if not any(isinstance(f, RedactTokens) for f in logging.getLogger(name).filters):
                logging.getLogger(name).addFilter(RedactTokens())
        app.state.service = service or await in_thread(Service.start, settings)
        try:
            async with anyio.create_task_group() as background, mcp.running(app):
                background.start_soon(revocations.run, app.state.service.keys)
                yield
                background.cancel_scope.cancel()
        finally:
            await in_thread(app.state.service.close)

    app = openapi.DocumentedAPI(
        title="agentbox",
        version=system.VERSION,
        description=openapi.DESCRIPTION,
        lifespan=lifespan,
        exception_handlers={
            AgentboxError: agentbox_error,
            RequestValidationError: invalid_request,
            Exception: unexpected_error,
            e2b_control.E2BError: e2b_control.e2b_error,
        },
    )
    app.state.revocations = revocations
    app.add_middleware(RequestSizeLimit, limit=settings.max_request)
    app.add_middleware(audit.AuditTrail)
    app.add_middleware(previews.PreviewHosts, domain=settings.preview_domain)  # *.localhost when no domain is set
    if settings.e2b_api:  # envd's hosts and paths are its own (its uploads have their own limit)
        app.add_middleware(e2b_envd.EnvdRoutes, domain=settings.preview_domain)
    app.add_middleware(EndOnRevocation, revocations=revocations)  # around every way in, previews and envd too
    app.add_middleware(RateLimits)  # outermost: a refused address reaches nothing
    for module in (
        system,
        keys,
        github,
        vault,
        volumes,
        workspaces,
        commands,
        files,
        tools,
        sessions,
        processes,
        terminals,
        ports,
        audit,
        snapshots,
        templates,
    ):
        app.include_router(module.router)
    if settings.e2b_api:
        app.include_router(e2b_secrets.router)  # before control's, whose last route answers every other path
        app.include_router(e2b_metrics.router)  # before control's too (/sandboxes/metrics is no sandbox id)
        app.include_router(e2b_volumes.router)  # before control's too
        # Before snapshots' (DELETE /templates/tags is no snapshot) and control's (its alias route answers too).
        app.include_router(e2b_templates.router)
        app.include_router(e2b_snapshots.router)  # before control's too
        app.include_router(e2b_control.router)
    # A route of the ASGI endpoint itself (a mount would redirect /mcp to /mcp/); not in the OpenAPI schema.
    app.router.routes.append(Route(mcp_http.PATH, mcp, include_in_schema=False))
    dashboard.mount(app)
    return app


async def agentbox_error(_request: Request, exc: AgentboxError) -> JSONResponse:
    """Our own errors: their status and detail (and the auth scheme a 401 asks for)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A 422 naming each bad field and what is wrong with it (E2B's 400 shape under /e2b)."""
    # FastAPI's own answer repeats each bad value ("input"), which may be a private key or an env value.
    errors = [{k: v for k, v in error.items() if k not in ("input", "ctx", "url")} for error in exc.errors()]
    if request.url.path.startswith(e2b_control.PREFIX + "/"):
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors)
        return await e2b_control.e2b_error(request, e2b_control.E2BError(400, said))
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    """A bug: a 500 that names the exception's type only; the traceback goes to the log."""
    log.exception("unexpected error")
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


class RedactTokens(logging.Filter):
    """Keeps tokens out of the server's log: a preview link's path, `?token=` and signed URLs' signatures
    (uvicorn logs each request's path and query)."""

    _PATH = re.compile(r"/preview/[^/?\s]+")
    _QUERY = re.compile(r"([?&](?:token|agentbox_preview|signature)=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        return True

    @classmethod
    def redact(cls, text: str) -> str:
        return cls._QUERY.sub(r"\1<redacted>", cls._PATH.sub("/preview/<token>", text))


class RequestSizeLimit:
    """Refuse request bodies over `limit` bytes with a 413, except uploads (a PUT of a workspace's file or
    archive), which have their own.

    Checked against Content-Length up front and counted as the body arrives, so a chunked
    body cannot get past it either.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    #: Bodies relayed to a workspace's server: streamed with backpressure under WORKSPACE_MAX_PROXIED_BODY.
    _PROXIED = re.compile(r"^/(preview/|api/v1/workspaces/[^/]+/ports/\d+/)")
    #: Uploads, bounded by WORKSPACE_MAX_UPLOAD where they are written; any other PUT (a secret's) is bounded here.
    _UPLOADS = re.compile(r"^/api/v1/workspaces/[^/]+/(files|archive)$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or (scope["method"] == "PUT" and self._UPLOADS.match(path))
            or self._PROXIED.match(path)
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # HTTPException: FastAPI passes it through its body parsing, unlike other errors.
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"the request body exceeds {self.limit} bytes (WORKSPACE_MAX_REQUEST); send files with PUT .../files"

    async def _refuse(self, send: Send) -> None:
        await JSONResponse({"detail": self._detail()}, status_code=413)({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
