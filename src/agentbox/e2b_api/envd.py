"""envd, E2B's in-sandbox daemon, served by agentbox for every sandbox of its E2B endpoint.

E2B runs envd inside each sandbox; agentbox serves its protocol on the server instead, over the
workspace's own channel (processes, files and watches go through the provider like any API
call). Two ways in, as E2B's SDK reaches envd:

- `E2B_SANDBOX_URL=<server>/e2b/envd`: one URL for every sandbox, which one named by the
  `E2b-Sandbox-Id` header the SDK always sends;
- the host form `49983-{id}.{WORKSPACE_PREVIEW_DOMAIN}` (`E2B_DOMAIN`), the same wildcard host as
  port previews, envd at the host's root.

Every call but `/health` carries the sandbox's access token (`X-Access-Token`, see access.py),
or, for `/files`, a signature made from it; `/health` without it is answered from the store,
with nothing run in the sandbox. The right to a call is shown before anything wakes, runs or
starts in the sandbox. The Connect services (process.py, filesystem.py) find the sandbox a call
is for in `TARGET`, set here once the call is let in.
"""

from __future__ import annotations

import base64
import posixpath
import re
import time
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError
from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox.auth.tokens import ENVD, TRAFFIC, Tokens
from agentbox.config import Settings
from agentbox.db.models import Workspace
from agentbox.e2b_api import access, control, interpreter
from agentbox.e2b_api.filesystem import FilesystemService
from agentbox.e2b_api.process import ProcessService
from agentbox.errors import AgentboxError, PayloadTooLarge
from agentbox.web.dependencies import in_thread, refused
from agentbox.web.files import file_answer, spooled
from agentbox.web.previews import TRAFFIC_HEADER, connect_of, open_workspace, target_of
from agentbox.web.proxy import Connect, proxy_http
from agentbox.web.tokens import bound_caller
from agentbox.wire.domain import Command, Status
from agentbox.workspaces.handle import WorkspaceHandle
from agentbox.workspaces.manager import WorkspaceManager

#: Where envd is served under the header form (E2B_SANDBOX_URL).
PREFIX = control.PREFIX + "/envd"
#: The port E2B's SDK names envd by in the host form.
ENVD_PORT = 49983
#: Users the SDK may name: E2B's own default, and agentbox's; both are the workspace's uid 1000.
SANDBOX_USERS = frozenset({"", "user", "agent"})


@dataclass(frozen=True)
class Target:
    """The sandbox a call is for, once it is let in."""

    manager: WorkspaceManager
    owner: str
    workspace: Workspace
    home: str

    @property
    def id(self) -> str:
        return self.workspace.id

    def use(self) -> WorkspaceHandle:
        """The sandbox to work in (a use: its expiry slides); blocks on the database."""
        return self.manager.use(self.owner, self.id)

    def path(self, path: str) -> str:
        """A path as envd takes it: relative ones (and `~`) from the user's home."""
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        return posixpath.normpath(posixpath.join(self.home, path)) if path else self.home


TARGET: ContextVar[Target] = ContextVar("envd_target")


class EnvdError(Exception):
    """An answer before any Connect service or file route runs: E2B's JSON shape, read by both."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self, path: str) -> JSONResponse:
        """envd's HTTP routes answer `{"code": <status>, "message"}`; the Connect ones a Connect error."""
        if path.startswith(("/process.Process/", "/filesystem.Filesystem/")):
            code = _CONNECT_CODES.get(self.status, "unknown")
            return JSONResponse({"code": code, "message": self.message}, self.status)
        return JSONResponse({"code": self.status, "message": self.message}, self.status)


_CONNECT_CODES = {401: "unauthenticated", 403: "permission_denied", 404: "not_found", 502: "unavailable"}


class EnvdRoutes:
    """Serves envd under PREFIX and at `49983-{id}.{domain}` hosts, and a sandbox's other ports under PREFIX
    by the `E2b-Sandbox-Port` header (the code interpreter's too, at `49999-{id}.{domain}` as well);
    passes everything else on."""

    def __init__(self, app: ASGIApp, domain: str = "") -> None:
        self.app = app
        host = re.escape(domain.split(":")[0]) if domain else None
        self.host = re.compile(rf"^(\d{{1,5}})-(ws-[0-9a-f]+)\.{host}(:\d+)?$", re.I) if host else None
        self.process = ProcessASGIApplication(ProcessService(), codecs=_CODECS)
        self.filesystem = FilesystemASGIApplication(FilesystemService(), codecs=_CODECS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = dict(scope.get("headers", []))
        if path == PREFIX or path.startswith(PREFIX + "/"):
            inner = dict(scope, path=path[len(PREFIX) :] or "/", root_path=scope.get("root_path", "") + PREFIX)
            port = headers.get(b"e2b-sandbox-port", b"").decode("latin-1")
            if port.isdigit() and int(port) != ENVD_PORT:
                sandbox_id = headers.get(b"e2b-sandbox-id", b"").decode("latin-1")
                raw = scope.get("raw_path") or path.encode()
                inner["raw_path"] = raw[len(PREFIX) :] or b"/"
                await _port_traffic(Request(inner, receive), sandbox_id, int(port))(inner, receive, send)
            else:
                await self.serve(inner, receive, send, None)
            return
        if path == "/files" and b"signature=" in scope.get("query_string", b""):
            # The SDK's signed URLs put /files at the root of E2B_SANDBOX_URL's host.
            await self.serve(scope, receive, send, None)
            return
        host = headers.get(b"host", b"").decode("latin-1")
        found = self.host.match(host) if self.host else None
        port = int(found.group(1)) if found else None
        if found is None or port not in (ENVD_PORT, interpreter.PORT):
            await self.app(scope, receive, send)  # other ports: previews (api/ports.py)
        elif port == ENVD_PORT:
            await self.serve(scope, receive, send, found.group(2).lower())
        else:
            await _port_traffic(Request(scope, receive), found.group(2).lower(), interpreter.PORT)(scope, receive, send)

    async def serve(self, scope: Scope, receive: Receive, send: Send, host_sandbox: str | None) -> None:
        request = Request(scope, receive)
        try:
            target = await _let_in(request, host_sandbox)
        except EnvdError as exc:
            await exc.response(scope["path"])(scope, receive, send)
            return
        if target is None:  # /health of a running sandbox
            await Response(status_code=204)(scope, receive, send)
            return
        reset = TARGET.set(target)
        try:
            path = scope["path"]
            if path.startswith(self.process.path + "/"):
                await self.process(scope, receive, send)
            elif path.startswith(self.filesystem.path + "/"):
                await self.filesystem(scope, receive, send)
            else:
                response = await _files(request, target)
                await response(scope, receive, send)
        finally:
            TARGET.reset(reset)


class _ReadOrRefuse:
    """A Connect codec that says `invalid_argument` for a body it cannot read.

    connect-python's own codecs let that escape as a ValueError, which it answers with a 500."""

    def __init__(self, codec: Codec[Any, Any]) -> None:
        self.codec = codec

    def name(self) -> str:
        return self.codec.name()

    def encode(self, message: Any) -> bytes:
        return self.codec.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return self.codec.decode(data, message_class)
        except ValueError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"the request's message could not be read: {exc}") from None


_CODECS = [_ReadOrRefuse(proto_binary_codec()), _ReadOrRefuse(proto_json_codec())]


async def _let_in(request: Request, host_sandbox: str | None) -> Target | None:
    """The target of an envd call, once it is shown to be allowed; None for `/health`. EnvdError otherwise."""
    service = request.app.state.service
    manager: WorkspaceManager | None = service.manager
    path: str = request.scope["path"]  # under PREFIX: what follows it
    known = path == "/health" or path == "/files" or path.startswith(("/process.Process/", "/filesystem.Filesystem/"))
    if manager is None or not service.settings.e2b_api or not known:
        raise EnvdError(
            404,
            f"no such envd call: {request.method} {path}; envd serves /health, /files, /process.Process/* and "
            "/filesystem.Filesystem/* (and is off when WORKSPACE_E2B_API=false)",
        )
    sandbox_id = host_sandbox or request.headers.get("e2b-sandbox-id", "")
    signed = path == "/files" and "signature" in request.query_params
    if not sandbox_id and signed:
        workspace = await in_thread(_signed_for, manager, service.settings, request)
        sandbox_id = workspace.id if workspace is not None else ""
    else:
        workspace = await in_thread(manager.lookup, sandbox_id) if sandbox_id else None
    presented = request.headers.get("x-access-token", "")
    holder = None if workspace is None else await in_thread(bound_caller, request, presented, ENVD, workspace)
    if holder is not None and workspace is not None:
        try:
            workspace = await in_thread(manager.wake, workspace)  # E2B's auto-resume, for its own callers only
        except AgentboxError as exc:  # the concurrency cap, the engine away
            raise EnvdError(exc.status_code, f"resuming sandbox {workspace.id} failed: {exc.detail}") from None
    gone = workspace is None or workspace.status != Status.RUNNING or control.ended(workspace)
    # /health looks into the sandbox for the SDK (it sends the token), which asks it whether a sandbox
    # whose stream broke is gone; anyone else is answered from the store: a stranger runs nothing there.
    if not gone and path == "/health" and holder is not None and workspace is not None:
        gone = not await in_thread(_alive, manager, workspace)
    if gone or workspace is None:
        # E2B's proxy's words: the SDK maps "was not found" to SandboxNotRunningException.
        raise EnvdError(
            502,
            f"The sandbox {sandbox_id or '(none named)'} was not found: it was killed, ended at its timeout or is "
            "paused (Sandbox.connect resumes a paused one)",
        )
    if path == "/health":
        return None
    if signed:
        expiration = request.query_params.get("signature_expiration", "")
        if expiration.isdigit() and int(expiration) < time.time():
            raise EnvdError(401, "signature is already expired")  # E2B's words, which its tests expect
        if not await in_thread(_signature_valid, request, access.envd_tokens(service.tokens, workspace)):
            refused(request)
            raise EnvdError(401, "invalid signature: make the file URL again with the sandbox's access token")
    elif holder is None:
        raise EnvdError(401, "invalid access token: send the sandbox's envdAccessToken as X-Access-Token")
    user = _user(request)
    if user not in SANDBOX_USERS:
        raise EnvdError(
            403, f"user {user!r} is not offered: everything runs as the sandbox's user `user` (uid 1000), no root"
        )
    return Target(manager, workspace.owner, workspace, control.home_of(workspace, manager.settings))


def _port_traffic(request: Request, sandbox_id: str, port: int) -> ASGIApp:
    """A request for one of the sandbox's ports, as E2B's proxy lets it in (public ports, or its traffic
    token); the code interpreter's takes the sandbox's access token first (see `_interpreter`)."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        manager: WorkspaceManager | None = request.app.state.service.manager
        try:
            if manager is None:
                raise EnvdError(502, _closed(sandbox_id, port))
            if port == interpreter.PORT:
                connect = await in_thread(_interpreter, request, manager, sandbox_id)
            else:
                workspace = await in_thread(open_workspace, request, sandbox_id)  # the right first, then a wake
                if workspace is None or workspace.status != Status.RUNNING:
                    raise EnvdError(502, _closed(sandbox_id, port))
                connect = connect_of(manager, workspace.owner, workspace.id, port)
            response = await proxy_http(request, connect, target_of(request, ""), "")
        except AgentboxError as exc:  # the engine away, nothing listening, a resume refused
            response = EnvdError(exc.status_code, exc.detail).response(scope["path"])
        except EnvdError as exc:
            response = exc.response(scope["path"])
        await response(scope, receive, send)

    return answer


def _interpreter(request: Request, manager: WorkspaceManager, sandbox_id: str) -> Connect:
    """Connections to the sandbox's code interpreter, for a caller shown to have the right to them.

    Its access token lets a caller wake the sandbox, start the interpreter and run code. Without it,
    only the SDK's context calls and /health go on, with the sandbox's traffic token, to an interpreter
    that already runs: nothing is woken, written or started for them.
    """
    workspace = manager.lookup(sandbox_id) if sandbox_id else None
    if workspace is None:
        raise EnvdError(502, _closed(sandbox_id, interpreter.PORT))
    presented = request.headers.get("x-access-token", "")
    if bound_caller(request, presented, ENVD, workspace):
        workspace = manager.wake(workspace)  # E2B's auto-resume, for its own callers only
        if workspace.status != Status.RUNNING:
            raise EnvdError(502, _closed(sandbox_id, interpreter.PORT))
        return interpreter.connector(manager, workspace, control.home_of(workspace, manager.settings))
    if interpreter.needs_token(request.method, target_of(request, "")):
        said = "an invalid access token was sent" if presented else "no access token was sent"
        raise EnvdError(
            401,
            f"running code in sandbox {workspace.id}'s code interpreter takes the sandbox's access token ({said}): "
            "send its envdAccessToken as X-Access-Token, as the SDK's run_code does",
        )
    # The SDK's context calls carry the traffic token, which every sandbox is given (control.py): even
    # on a public sandbox the interpreter is no public app, since a context is a process in it.
    if not bound_caller(request, request.headers.get(TRAFFIC_HEADER, ""), TRAFFIC, workspace):
        raise EnvdError(
            401,
            f"sandbox {workspace.id}'s code interpreter takes its access token (X-Access-Token) or its traffic "
            "token (E2B-Traffic-Access-Token), as E2B's SDK sends them",
        )
    if workspace.status != Status.RUNNING:
        raise EnvdError(502, _closed(sandbox_id, interpreter.PORT))
    return interpreter.running(manager, workspace)


def _closed(sandbox_id: str, port: int) -> str:
    return (
        f"The sandbox {sandbox_id or '(none named)'} was not found, or its port {port} is not open to this request "
        "(send its traffic access token as E2B-Traffic-Access-Token)"
    )


def _alive(manager: WorkspaceManager, workspace: Workspace) -> bool:
    """Whether a command runs in it now: envd's /health is a round trip into the sandbox, and a
    sandbox being deleted still reads as running in the store (and to the engine) for a moment."""
    try:
        return (
            manager.use(workspace.owner, workspace.id).exec(Command(argv=["true"], cwd="/", timeout=5)).exit_code == 0
        )
    except AgentboxError:
        return False


def _user(request: Request) -> str:
    """The user a call names: `?username=` on /files, Basic authorization on the Connect calls."""
    if request.scope["path"] == "/files":
        return request.query_params.get("username", "")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(encoded).decode().partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        return "?"


def _signature_valid(request: Request, envd_tokens: list[str]) -> bool:
    query = request.query_params
    operation = "read" if request.method == "GET" else "write"
    return any(
        access.signature_matches(
            query["signature"],
            query.get("path", ""),
            operation,
            query.get("username", ""),
            token,
            query.get("signature_expiration"),
        )
        for token in envd_tokens
    )


def _signed_for(manager: WorkspaceManager, settings: Settings, request: Request) -> Workspace | None:
    """The sandbox a signed file URL without a sandbox id is for: the one whose token signed it.

    Under E2B_SANDBOX_URL the SDK's `download_url`/`upload_url` carry no sandbox id (E2B's own
    are host-form URLs). Each running workspace's tokens are tried: a few hashes per workspace.
    """
    tokens: Tokens = request.app.state.service.tokens
    keys_of: dict[str, list[str]] = {}  # owner -> ids of their working keys, read once per owner
    for workspace in manager.running():
        if workspace.owner not in keys_of:
            keys_of[workspace.owner] = [key.id for key in tokens.keys.find(workspace.owner)]
        candidates = [tokens.bound_with(key_id, ENVD, workspace.id) for key_id in keys_of[workspace.owner]]
        if _signature_valid(request, candidates):
            return workspace
    return None


# /files


async def _files(request: Request, target: Target) -> Response:
    path = target.path(request.query_params.get("path", ""))
    try:
        if request.method == "GET":
            return await _download(target, path)
        if request.method == "POST":
            return await _upload(request, target, path)
    except AgentboxError as exc:
        refused = JSONResponse({"code": exc.status_code, "message": exc.detail}, exc.status_code)
    except EnvdError as exc:
        refused = exc.response("/files")
    else:
        return JSONResponse({"code": 405, "message": "use GET or POST on /files"}, 405)
    if request.method == "POST":
        # Refused while the body may still come: closing the connection stops the client sending the
        # rest (kept open, the server would read it all to find the next request).
        refused.headers["Connection"] = "close"
    return refused


async def _upload(request: Request, target: Target, path: str) -> Response:
    if any(name.startswith("x-metadata-") for name in request.headers):
        raise EnvdError(
            400,
            "file metadata (X-Metadata-*) is not offered: gVisor's file systems here keep no extended "
            "attributes; write the file without metadata",
        )
    parts = await _parts(request)
    try:
        return JSONResponse([await _upload_one(request, target, path, part) for part in parts])
    finally:
        for part in parts:  # those after a failed one too
            part.data.close()


async def _download(target: Target, path: str) -> Response:
    found = await in_thread(lambda: target.use().read(path))
    if isinstance(found, list):
        raise EnvdError(400, f"{path} is a directory: read the files in it, or list it")
    stat, body = found
    return await file_answer(
        stat.size, body, {"Content-Disposition": f'attachment; filename="{posixpath.basename(path)}"'}
    )


@dataclass
class _Part:
    path: str | None  # None: the `path` parameter
    data: Any  # a file object at its start
    size: int


async def _parts(request: Request) -> list[_Part]:
    """The files of an upload: the parts of a multipart form (each part's file name is its path), or
    the whole body (octet-stream, gzip when its Content-Encoding says so). PayloadTooLarge as soon as
    their bytes together pass WORKSPACE_MAX_UPLOAD: no more than that is ever taken in."""
    limit = request.app.state.service.settings.max_upload
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _form_parts(request, limit)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("identity", "gzip"):
        raise EnvdError(400, f"Content-Encoding {encoding!r} is not supported: send gzip or identity")
    try:
        spool, size = await spooled(request.stream(), limit, gunzip=encoding == "gzip")
    except zlib.error as exc:
        raise EnvdError(400, f"the body is not gzip ({exc}): compress it whole, or drop Content-Encoding") from None
    return [_Part(None, spool, size)]


#: Parts of one upload form, and the size of a part that is not a file (a field, read and ignored).
MAX_FORM_PARTS = 1000
MAX_FIELD_SIZE = 64 << 10


class _CappedParser(MultiPartParser):
    """Starlette's multipart parser, with the upload limit counted over every part's bytes as they
    arrive: its own per-part limit leaves file parts unbounded (spooled whole, then measured).
    (python-multipart bounds each part's headers itself.)"""

    #: Each file is kept in memory up to this, then on disk: a form of many files holds at most
    #: MAX_FORM_PARTS of these in memory (Starlette's 1 MiB made that a GiB).
    spool_max_size = 16 << 10

    def __init__(self, request: Request, limit: int) -> None:
        super().__init__(
            request.headers,
            request.stream(),
            max_files=MAX_FORM_PARTS,
            max_fields=MAX_FORM_PARTS,
            max_part_size=MAX_FIELD_SIZE,
        )
        self.limit = limit
        self.taken = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.taken += end - start
        if self.taken > self.limit:
            raise PayloadTooLarge(
                f"the upload's files exceed the limit (WORKSPACE_MAX_UPLOAD) of {self.limit} bytes together: "
                "send fewer or smaller files per request"
            )
        super().on_part_data(data, start, end)


async def _form_parts(request: Request, limit: int) -> list[_Part]:
    try:
        form = await _CappedParser(request, limit).parse()  # it closes what it spooled when it fails
    except MultiPartException as exc:
        reason = exc.__cause__ or exc  # python-multipart's own words, which Starlette wraps
        raise EnvdError(
            400, f"the multipart form could not be read ({reason}): send each file as a part with its headers"
        ) from None
    parts = [
        _Part(value.filename or None, value.file, value.size or 0)
        for _, value in form.multi_items()
        if not isinstance(value, str)
    ]
    if not parts:
        raise EnvdError(400, "the form has no file part: send each file as a `file` part named by its path")
    return parts


async def _upload_one(request: Request, target: Target, default_path: str, part: _Part) -> dict[str, str]:
    path = target.path(part.path) if part.path else default_path
    if not part.path and not request.query_params.get("path"):
        raise EnvdError(400, "name the file: a `path` parameter, or the part's file name")
    chunks: Iterator[bytes] = iter(lambda: part.data.read(1 << 20), b"")
    await in_thread(lambda: target.use().write_file(path, chunks, part.size, 0o644))
    return {"name": posixpath.basename(path), "path": path, "type": "file"}
