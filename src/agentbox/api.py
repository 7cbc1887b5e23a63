"""The HTTP API under /api/v1.

Route handlers are thin: parse, authenticate, call the manager in a worker thread, shape
the answer. Every error leaves as JSON with a `detail`.
"""

import hmac
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentbox.config import Settings
from agentbox.errors import AgentboxError, NotFound, PayloadTooLarge, Unauthorized, Unprocessable
from agentbox.github.service import GitHub
from agentbox.manager import WorkspaceManager
from agentbox.models import Status
from agentbox.providers.base import ExecEvent, Exit, OutputLimit, TextDecoder
from agentbox.schemas import (
    AbsolutePath,
    CreateWorkspace,
    DirEntryOut,
    DirListing,
    ExecIn,
    ExecOut,
    ExtendWorkspace,
    GitHubAppList,
    GitHubAppOut,
    Health,
    PushOut,
    RegisterApp,
    WorkspaceList,
    WorkspaceOut,
    WriteResult,
)
from agentbox.service import Service

log = logging.getLogger("agentbox.api")
T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False)
VERSION = version("agentbox")


class RequestSizeLimit:
    """Refuse request bodies over `limit` bytes with a 413, except uploads (PUT), which have their own.

    Checked against Content-Length up front and counted as the body arrives, so a chunked
    body cannot get past it either.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "PUT":
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


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(lambda: function(*args))


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The ASGI app. `service` may be given already started; either way the app closes it at shutdown.

    (At shutdown, not after the server returns: uvicorn re-raises the SIGTERM it handled, so
    nothing after `uvicorn.run` would run.)
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or await in_thread(Service.start, settings)
        try:
            yield
        finally:
            await in_thread(app.state.service.close)

    app = FastAPI(title="agentbox", version=VERSION, lifespan=lifespan)
    app.add_middleware(RequestSizeLimit, limit=settings.max_request)

    @app.exception_handler(AgentboxError)
    async def agentbox_error(_request: Request, exc: AgentboxError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer repeats each bad value ("input"), which may be a private key or an env value.
        errors = [{k: v for k, v in error.items() if k not in ("input", "ctx", "url")} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    # Dependencies are `async def` though they do not await: plain CPU work, and a sync
    # dependency would cost a thread hop per request.
    async def manager(request: Request) -> WorkspaceManager:
        found: WorkspaceManager | None = request.app.state.service.manager
        if found is None:
            raise NotFound(
                "agent workspaces are disabled on this server: set ENABLE_AGENT_WORKSPACES=true and restart it"
            )
        return found

    async def owner(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> str:
        if credentials is None:
            raise Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (keys come from WORKSPACE_API_KEYS)"
            )
        presented = credentials.credentials.encode()
        found: str | None = None
        # Compare against every key, in constant time each, so timing says nothing about which matched.
        keys: dict[str, str] = request.app.state.service.settings.owners_by_key
        for key, key_owner in keys.items():
            if hmac.compare_digest(presented, key.encode()):
                found = key_owner
        if found is None:
            raise Unauthorized("invalid API key: use one of the keys in the server's WORKSPACE_API_KEYS")
        return found

    async def github(request: Request) -> GitHub:
        found: GitHub | None = request.app.state.service.github
        if found is None:
            raise NotFound(
                "GitHub Apps are not configured on this server: set GITHUB_APP_ENCRYPTION_KEY "
                "(32 random bytes, hex or base64) and restart it"
            )
        return found

    Manager = Annotated[WorkspaceManager, Depends(manager)]
    GitHubApps = Annotated[GitHub, Depends(github)]
    # `manager` comes first so that a disabled server answers 404 before asking for a key.
    Owner = Annotated[str, Depends(owner)]
    Path = Annotated[AbsolutePath, Query(description="absolute path inside the workspace")]

    @app.get("/api/v1/health", response_model=Health)
    def health(request: Request) -> Health:
        svc: Service = request.app.state.service
        choice = svc.runtime
        return Health(
            status="ok",
            workspaces_enabled=svc.settings.enabled,
            runtime=choice.runtime if choice else None,
            gvisor=bool(choice and choice.gvisor),
            gvisor_platform=choice.platform if choice else None,
            runsc_version=choice.version if choice else None,
            runtime_reason=choice.reason if choice else "workspaces are disabled (ENABLE_AGENT_WORKSPACES=false)",
            providers=sorted(svc.manager.providers) if svc.manager else [],
            version=VERSION,
        )

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics(request: Request, who: Owner) -> Response:
        # Any key will do (Prometheus sends one with `authorization` in its scrape config).
        svc: Service = request.app.state.service
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/v1/github/apps", status_code=201, response_model=GitHubAppOut)
    async def register_github_app(body: RegisterApp, apps: GitHubApps, who: Owner) -> GitHubAppOut:
        return GitHubAppOut.of(await in_thread(apps.register, who, body))

    @app.get("/api/v1/github/apps", response_model=GitHubAppList)
    async def list_github_apps(apps: GitHubApps, who: Owner) -> GitHubAppList:
        return GitHubAppList(apps=[GitHubAppOut.of(a) for a in await in_thread(apps.apps, who)])

    @app.get("/api/v1/github/apps/{app_id}", response_model=GitHubAppOut)
    async def get_github_app(app_id: str, apps: GitHubApps, who: Owner) -> GitHubAppOut:
        return GitHubAppOut.of(await in_thread(apps.app, who, app_id))

    @app.delete("/api/v1/github/apps/{app_id}", status_code=204)
    async def delete_github_app(app_id: str, apps: GitHubApps, who: Owner) -> Response:
        await in_thread(apps.delete, who, app_id)
        return Response(status_code=204)

    @app.post("/api/v1/workspaces/{workspace_id}/git/push", response_model=PushOut)
    async def git_push(workspace_id: str, mgr: Manager, who: Owner) -> PushOut:
        workspace, branch, commit = await in_thread(mgr.git_push, who, workspace_id)
        assert workspace.repo is not None
        return PushOut(repository=workspace.repo["repository"], branch=branch, commit=commit)

    @app.post("/api/v1/workspaces", status_code=201, response_model=WorkspaceOut)
    async def create_workspace(body: CreateWorkspace, mgr: Manager, who: Owner) -> WorkspaceOut:
        return WorkspaceOut.of(await in_thread(mgr.create, who, body.to_domain()))

    @app.get("/api/v1/workspaces", response_model=WorkspaceList)
    async def list_workspaces(
        mgr: Manager,
        who: Owner,
        status: Status | None = None,
        label: Annotated[list[str], Query(description="key=value; repeat to require several")] = [],  # noqa: B006
    ) -> WorkspaceList:
        wanted = {}
        for item in label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise Unprocessable(f"label filter {item!r} must be key=value")
            wanted[key] = value
        found = await in_thread(mgr.find, who, status, wanted)
        return WorkspaceList(workspaces=[WorkspaceOut.of(w) for w in found])

    @app.get("/api/v1/workspaces/{workspace_id}", response_model=WorkspaceOut)
    async def get_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
        return WorkspaceOut.of(await in_thread(mgr.get, who, workspace_id))

    @app.delete("/api/v1/workspaces/{workspace_id}", status_code=204)
    async def delete_workspace(workspace_id: str, mgr: Manager, who: Owner) -> Response:
        await in_thread(mgr.delete, who, workspace_id)
        return Response(status_code=204)

    @app.post("/api/v1/workspaces/{workspace_id}/stop", response_model=WorkspaceOut)
    async def stop_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
        return WorkspaceOut.of(await in_thread(mgr.stop, who, workspace_id))

    @app.post("/api/v1/workspaces/{workspace_id}/start", response_model=WorkspaceOut)
    async def start_workspace(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceOut:
        return WorkspaceOut.of(await in_thread(mgr.start, who, workspace_id))

    @app.post("/api/v1/workspaces/{workspace_id}/extend", response_model=WorkspaceOut)
    async def extend_workspace(
        workspace_id: str, mgr: Manager, who: Owner, body: ExtendWorkspace | None = None
    ) -> WorkspaceOut:
        ttl_days = body.ttl_days if body else None
        return WorkspaceOut.of(await in_thread(mgr.extend, who, workspace_id, ttl_days))

    @app.post("/api/v1/workspaces/{workspace_id}/exec", response_model=ExecOut)
    async def exec_command(workspace_id: str, body: ExecIn, mgr: Manager, who: Owner) -> ExecOut:
        result = await in_thread(mgr.exec, who, workspace_id, body.to_command())
        return ExecOut(**vars(result))

    @app.post(
        "/api/v1/workspaces/{workspace_id}/exec/stream", responses={200: {"content": {"application/x-ndjson": {}}}}
    )
    async def exec_stream(workspace_id: str, body: ExecIn, mgr: Manager, who: Owner) -> StreamingResponse:
        events = await in_thread(mgr.exec_stream, who, workspace_id, body.to_command())
        return StreamingResponse(_ndjson(events, mgr.settings.exec_output_limit), media_type="application/x-ndjson")

    @app.get(
        "/api/v1/workspaces/{workspace_id}/files",
        response_model=None,
        responses={200: {"content": {"application/octet-stream": {}, "application/json": {}}}},
    )
    async def read_file(workspace_id: str, path: Path, mgr: Manager, who: Owner) -> Response:
        found = await in_thread(mgr.stat, who, workspace_id, path)
        if isinstance(found, list):
            entries = [
                DirEntryOut(name=e.name, type=e.type, size=e.size, mode=f"{e.mode:o}", mtime=e.mtime) for e in found
            ]
            return JSONResponse(DirListing(path=path, entries=entries).model_dump())
        stat, body = await in_thread(mgr.read_file, who, workspace_id, path)
        return StreamingResponse(
            body,
            media_type="application/octet-stream",
            headers={"Content-Length": str(stat.size), "X-File-Mode": f"{stat.mode:o}"},
        )

    @app.put("/api/v1/workspaces/{workspace_id}/files", response_model=WriteResult)
    async def write_file(
        workspace_id: str,
        path: Path,
        request: Request,
        mgr: Manager,
        who: Owner,
        mode: Annotated[str, Query(pattern=r"^[0-7]{3,4}$", description="octal permissions")] = "644",
    ) -> WriteResult:
        limit = mgr.settings.max_upload
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            size = int(declared)
            if size > limit:
                raise PayloadTooLarge(f"the file is {size} bytes; the limit (WORKSPACE_MAX_UPLOAD) is {limit}")
            chunks = _sync_chunks(request.stream(), limit)
            written = await in_thread(mgr.write_file, who, workspace_id, path, chunks, size, int(mode, 8))
        else:
            # No length given (chunked upload): spool it first, since the helper commits a file
            # only when it got exactly the announced number of bytes.
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"the upload exceeds the limit (WORKSPACE_MAX_UPLOAD) of {limit} bytes")
                    spool.write(chunk)
                spool.seek(0)
                written = await in_thread(
                    mgr.write_file, who, workspace_id, path, iter(lambda: spool.read(1 << 16), b""), size, int(mode, 8)
                )
        return WriteResult(path=path, size=written)

    @app.get(
        "/api/v1/workspaces/{workspace_id}/archive",
        response_model=None,
        responses={200: {"content": {"application/x-tar": {}}}},
    )
    async def read_archive(workspace_id: str, path: Path, mgr: Manager, who: Owner) -> StreamingResponse:
        body = await in_thread(mgr.read_archive, who, workspace_id, path)
        return StreamingResponse(body, media_type="application/x-tar")

    @app.put("/api/v1/workspaces/{workspace_id}/archive", status_code=204)
    async def write_archive(workspace_id: str, path: Path, request: Request, mgr: Manager, who: Owner) -> Response:
        chunks = _sync_chunks(request.stream(), mgr.settings.max_upload)
        await in_thread(mgr.write_archive, who, workspace_id, path, chunks)
        return Response(status_code=204)

    return app


def _sync_chunks(stream: AsyncIterator[bytes], limit: int) -> Iterator[bytes]:
    """The request body, pulled from the event loop by a worker thread, at most `limit` bytes."""

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    total = 0
    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the upload exceeds the limit (WORKSPACE_MAX_UPLOAD) of {limit} bytes")
        if chunk:
            yield chunk


def _ndjson(events: Iterator[ExecEvent], limit: int) -> Iterator[bytes]:
    """Exec events as NDJSON lines; output past `limit` per stream is dropped and flagged."""
    decoders = {"stdout": TextDecoder(), "stderr": TextDecoder()}
    kept = OutputLimit(limit)
    try:
        for event in events:
            if isinstance(event, Exit):
                for stream, decoder in decoders.items():
                    if tail := decoder.decode(b"", final=True):
                        yield _line({"stream": stream, "data": tail})
                yield _line(
                    {
                        "exit_code": event.exit_code,
                        "timed_out": event.timed_out,
                        "duration_ms": event.duration_ms,
                        "signal": event.signal,
                        "stdout_truncated": kept.truncated["stdout"],
                        "stderr_truncated": kept.truncated["stderr"],
                    }
                )
            elif text := decoders[event.stream].decode(kept.take(event)):
                yield _line({"stream": event.stream, "data": text})
    except AgentboxError as exc:
        yield _line({"error": exc.detail})
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"
