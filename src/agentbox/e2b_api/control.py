"""E2B's control-plane REST API (what `Sandbox.create`, `list`, `get_info`, `set_timeout`, `connect` and
`kill` call), served by agentbox over its own workspaces.

Served under `/e2b` (the SDK's `E2B_API_URL` is `http(s)://<server>/e2b`). A sandbox is an
agentbox workspace of the caller (`X-API-Key` is an agentbox API key): same owners, limits,
firewall, pool and reaper. E2B's `timeout` is a fixed end, not a sliding TTL: the workspace ends
then, used or not, unless `set_timeout` or `connect` moves it. Metadata is the workspace's labels.
Errors are E2B's shape, `{"code", "message"}`, which the SDK parses before mapping them.

envd, what the SDK reaches inside a sandbox, is envd.py; `envdAccessToken` is made in access.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agentbox.auth.keys import Caller
from agentbox.auth.tokens import Tokens
from agentbox.config import Settings
from agentbox.db.models import Template, Workspace, utcnow
from agentbox.e2b_api import access, interpreter
from agentbox.e2b_api import network as e2b_network
from agentbox.errors import AgentboxError, BadRequest, NotFound
from agentbox.web.dependencies import authenticated, in_thread, refused
from agentbox.wire.common import MAX_SECONDS, Env, LabelValue, MetadataKey
from agentbox.wire.domain import NewWorkspace, PauseAtEnd, Status, VolumeRequest
from agentbox.wire.network import NetworkPolicy, policy_json, policy_of
from agentbox.wire.volumes import MAX_MOUNTS, mount_path_problem
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.templates import is_template_image

PREFIX = "/e2b"
#: The envd protocol version agentbox answers as (see docs/e2b-wire-protocol.md, "envdVersion").
ENVD_VERSION = "0.6.4"
CLIENT_ID = "agentbox"
#: E2B's default sandbox lifetime when `create` names none.
DEFAULT_TIMEOUT = 300
#: The template that stands for the server's default image.
BASE_TEMPLATE = "base"
#: The `e2b-code-interpreter` SDK's default template (interpreter.py).
INTERPRETER_TEMPLATE = "code-interpreter-v1"
#: The form of a snapshot's id (agentbox's, db/models.py), which a template may name.
SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{16}")
#: The home (and default working directory) of E2B's `base` template; other images work in /workspace.
E2B_HOME = "/home/user"

router = APIRouter(prefix=PREFIX, include_in_schema=False)
_T = TypeVar("_T")


def sdk_urls(base: str) -> tuple[str, str]:
    """E2B_API_URL and E2B_SANDBOX_URL of a server at `base` (its root URL, no trailing slash)."""
    return f"{base}{PREFIX}", f"{base}{PREFIX}/envd"


class E2BError(Exception):
    """An error in E2B's shape."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def e2b_error(_request: Request, exc: E2BError) -> JSONResponse:
    # Should-Retry: the SDK would otherwise retry a 502-504 three times before saying anything.
    headers = {"Should-Retry": "false"}
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.code, headers=headers)


async def _manager(request: Request) -> WorkspaceManager:
    found: WorkspaceManager | None = request.app.state.service.manager
    if found is None:
        raise E2BError(404, "agent workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES)")
    return found


async def _caller(request: Request, x_api_key: Annotated[str, Header()] = "") -> Caller:
    found = await authenticated(request.app.state.service.keys, x_api_key)
    if found is None:
        refused(request)
        raise E2BError(401, "invalid API key: E2B_API_KEY must be an agentbox API key that works (unknown or revoked)")
    return found


async def _tokens(request: Request) -> Tokens:
    found: Tokens = request.app.state.service.tokens
    return found


Manager = Annotated[WorkspaceManager, Depends(_manager)]
Signer = Annotated[Tokens, Depends(_tokens)]
Who = Annotated[Caller, Depends(_caller)]


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """A manager call in a worker thread, its errors as E2B's."""
    try:
        return await in_thread(function, *args)
    except AgentboxError as exc:
        raise E2BError(exc.status_code, exc.detail) from None


class Timeout(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    timeout: int = Field(DEFAULT_TIMEOUT, ge=0, le=MAX_SECONDS)


class Connect(Timeout):
    #: False: a paused sandbox boots afresh from its files, whatever memory its pause kept.
    memory: bool = True


class Pause(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    #: False: keep the files only (E2B's `mode="filesystem"`); else the memory too where it can be kept.
    memory: bool = True


class AutoResume(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False


class VolumeMount(BaseModel):
    """E2B's `SandboxVolumeMount`: a volume of the owner's (e2b_api/volumes.py, /api/v1/volumes) by name, and where."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    path: str = Field(min_length=1, max_length=1024)


class NewSandbox(Timeout):
    template_id: str = Field(BASE_TEMPLATE, alias="templateID", min_length=1, max_length=512)
    metadata: dict[MetadataKey, LabelValue] = Field(default_factory=dict, max_length=64)
    env_vars: Env = Field(default_factory=dict, alias="envVars")
    # Read by network.py (E2B's fields there, each refusal naming its own).
    allow_internet_access: bool | None = None
    network: dict[str, Any] | None = None
    secure: bool = True  # envd is always secured (E2B's SDK now says the same)
    # E2B's lifecycle: paused at the timeout instead of killed, and woken by traffic.
    auto_pause: bool = Field(False, alias="autoPause")
    auto_pause_memory: bool | None = Field(None, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(None, alias="autoResume")
    # E2B features agentbox does not offer: refused when asked for, never silently dropped.
    mcp: Any = None
    iam: Any = None
    volume_mounts: list[VolumeMount] | None = Field(None, alias="volumeMounts", max_length=MAX_MOUNTS)

    def refusals(self) -> list[str]:
        asked = {
            "mcp (the MCP gateway; agentbox serves MCP at /mcp)": self.mcp not in (None, {}),
            "iam": self.iam not in (None, {}),
        }
        return [name for name, wanted in asked.items() if wanted]

    def volumes(self) -> tuple[VolumeRequest, ...]:
        """The volumes to mount, read-write as E2B's are. Raises E2BError (400) naming a bad or repeated path."""
        mounts = self.volume_mounts or []
        for index, mount in enumerate(mounts):
            problem = mount_path_problem(mount.path)
            if problem is None and mount.path in [m.path for m in mounts[:index]]:
                problem = "is named twice: give each volume its own path"
            if problem is not None:
                raise E2BError(400, f"volumeMounts[{index}].path: {problem}")
        return tuple(VolumeRequest(mount.name, mount.path) for mount in mounts)

    def pause_at_end(self) -> PauseAtEnd | None:
        """Raises E2BError (400) for an auto-resume that could not work."""
        auto_resume = self.auto_resume is not None and self.auto_resume.enabled
        if auto_resume and not self.auto_pause:
            raise E2BError(400, "autoResume needs autoPause: only a sandbox paused at its timeout can be woken")
        if auto_resume and self.auto_pause_memory is False:
            raise E2BError(400, "autoResume cannot wake a filesystem-only pause (autoPauseMemory false): use connect()")
        if not self.auto_pause:
            return None
        return PauseAtEnd(keep_memory=self.auto_pause_memory is not False, auto_resume=auto_resume)


@router.post("/v2/sandboxes", status_code=201)
async def create(body: NewSandbox, mgr: Manager, who: Who, tokens: Signer) -> dict[str, Any]:
    refused = body.refusals()
    if refused:
        raise E2BError(400, f"not offered by agentbox's E2B endpoint: {', '.join(refused)}")
    mapped = _mapped(lambda: e2b_network.from_create(body.network, body.allow_internet_access))
    snapshot: str | None = await _call(_snapshot_of, mgr, who.owner, body.template_id)
    # A template built through E2B's build API (templates.py) is the owner's agentbox template of that name.
    template = None if snapshot else await in_thread(_template_of, mgr, who.owner, body.template_id)
    request = NewWorkspace(
        image=None if snapshot or template else _image(body.template_id, mgr),
        template=template,
        env=dict(body.env_vars),
        labels=dict(body.metadata),
        network=None if mapped.policy is None else _policy(mapped.policy),
        deadline_seconds=body.timeout or DEFAULT_TIMEOUT,
        public_ports=mapped.public_ports is not False,  # E2B's default: public
        request_host=mapped.request_host,
        pause_at_end=body.pause_at_end(),
        volumes=body.volumes(),
        snapshot=snapshot,  # its image, sizes and network, unless the body says otherwise
    )
    workspace: Workspace = await _call(mgr.create, who.owner, request, who.quota)
    if body.template_id == INTERPRETER_TEMPLATE:
        # E2B's interpreter runs from the sandbox's boot, and its SDK's context calls come without the
        # access token that would start ours (envd.py): so a sandbox of its template gets it now.
        await _call(interpreter.ready, mgr, workspace, home_of(workspace, mgr.settings))
    return _sandbox(workspace, mgr, who, tokens)


@router.get("/v2/sandboxes")
async def list_sandboxes(
    mgr: Manager,
    who: Who,
    metadata: str = "",
    state: str = "",
    order: Literal["asc", "desc"] = "desc",
    template: str = "",
    started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    next_token: Annotated[str, Query(alias="nextToken")] = "",
) -> Response:
    wanted = dict(parse_qsl(metadata))
    states = {s for s in state.split(",") if s} or {"running", "paused"}
    found: list[Workspace] = await _call(mgr.find, who.owner, None, wanted)
    listed = [
        w
        for w in found
        if _state(w) in states
        and (not template or _template(w, mgr) == template)
        and (started_after is None or w.created_at >= _aware(started_after))
    ]
    listed.sort(key=lambda w: (w.created_at, w.id), reverse=order == "desc")
    ids = [w.id for w in listed]
    start = ids.index(next_token) + 1 if next_token in ids else 0  # the token: the last id of the page before
    page = listed[start : start + limit]
    headers = {"x-next-token": page[-1].id} if start + limit < len(listed) and page else {}
    return JSONResponse([_listed(w, mgr) for w in page], headers=headers)


@router.get("/sandboxes/{sandbox_id}")
async def get_info(sandbox_id: str, mgr: Manager, who: Who, tokens: Signer) -> dict[str, Any]:
    workspace: Workspace = await _call(_found, mgr, who.owner, sandbox_id)
    policy = policy_of(workspace.network, workspace.egress, workspace.allow)
    shown = e2b_network.to_info(
        policy if isinstance(policy, str) else policy_json(policy), workspace.public_ports, workspace.request_host
    )
    return {**_listed(workspace, mgr), **_sandbox(workspace, mgr, who, tokens), **shown}


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def update_network(sandbox_id: str, body: dict[str, Any], mgr: Manager, who: Who) -> Response:
    """E2B's `update_network`: the whole policy replaced (what the body leaves out is cleared); a running
    sandbox's next connections obey it."""
    policy = _policy(_mapped(lambda: e2b_network.from_update(body)))
    await _call(_found, mgr, who.owner, sandbox_id)
    await _call(mgr.set_network, who.owner, sandbox_id, policy)
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill(sandbox_id: str, mgr: Manager, who: Who) -> Response:
    try:
        await _call(_found, mgr, who.owner, sandbox_id)
    except E2BError:
        # Gone in E2B's eyes (past its end) but maybe not removed yet: removed now, and "not found".
        workspace = await in_thread(mgr.lookup, sandbox_id)
        if workspace is not None and workspace.owner == who.owner and ended(workspace):
            await _call(mgr.delete, who.owner, sandbox_id)
        raise
    await _call(mgr.delete, who.owner, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: Timeout, mgr: Manager, who: Who) -> Response:
    await _call(_found, mgr, who.owner, sandbox_id)
    await _call(mgr.set_deadline, who.owner, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(sandbox_id: str, mgr: Manager, who: Who, body: Pause | None = None) -> Response:
    """Pause: the sandbox stops, its files kept (its memory too where agentbox can: a sandbox without
    internet access, under gVisor's checkpoints), and waits without an end until `connect` resumes it."""
    workspace: Workspace = await _call(_found, mgr, who.owner, sandbox_id)
    if workspace.status == Status.STOPPED:
        raise E2BError(409, f"sandbox {sandbox_id} is already paused")
    await _call(mgr.pause, who.owner, sandbox_id, body is None or body.memory)
    return Response(status_code=204)


@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect(sandbox_id: str, body: Connect, mgr: Manager, who: Who, tokens: Signer) -> dict[str, Any]:
    workspace: Workspace = await _call(_found, mgr, who.owner, sandbox_id)
    if workspace.status == Status.STOPPED:
        workspace = await _call(mgr.start, who.owner, sandbox_id, body.memory, who.quota)
    workspace = await _call(mgr.set_deadline, who.owner, sandbox_id, body.timeout, True)
    return _sandbox(workspace, mgr, who, tokens)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201)
async def resume(sandbox_id: str, body: Connect, mgr: Manager, who: Who, tokens: Signer) -> dict[str, Any]:
    """The older form of `connect` for a paused sandbox."""
    return await connect(sandbox_id, body, mgr, who, tokens)


@router.get("/templates/aliases/{alias}")
async def template_alias(alias: str, mgr: Manager, who: Who) -> dict[str, Any]:
    """Whether a template exists: `base`, or an image on the engine of the server's default provider."""
    image = _image(alias, mgr)
    if not await _call(mgr.has_image, image):
        raise E2BError(404, f"template {alias!r} not found: use `base`, or an image on the agentbox server's engine")
    return {"templateID": alias, "public": True}


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown(path: str) -> Response:
    """What E2B offers and agentbox does not (template builds, a volume's content...), in E2B's shape."""
    raise E2BError(404, f"/{path} is not offered by agentbox's E2B endpoint (see docs/e2b-endpoint.md)")


_NETWORK_POLICY: TypeAdapter[NetworkPolicy] = TypeAdapter(NetworkPolicy)


def _mapped(mapping: Callable[[], _T]) -> _T:
    """network.py's mapping of an E2B body, its refusal as E2B's 400 naming the field."""
    try:
        return mapping()
    except e2b_network.Refused as exc:
        raise E2BError(400, str(exc)) from None


def _policy(mapped: e2b_network.AgentboxPolicy) -> NetworkPolicy:
    try:
        return _NETWORK_POLICY.validate_python(mapped)
    except ValidationError as error:  # the mapping checks its output: this would be a bug, still not a 500
        first = error.errors()[0]
        raise E2BError(400, f"network: {first['msg'].removeprefix('Value error, ')}") from None


def _found(mgr: WorkspaceManager, owner: str, sandbox_id: str) -> Workspace:
    """The owner's sandbox; NotFound in E2B's words otherwise (and for a deleted or failed one). One made
    to pause at its timeout and past it is paused now, if the reaper has not come by yet."""
    try:
        workspace = mgr.get(owner, sandbox_id)
    except NotFound:
        workspace = None
    if workspace is not None and workspace.pause_at_end is not None and ended(workspace):
        workspace = mgr.pause_at_end(workspace)
    if (
        workspace is None
        or workspace.status not in (Status.RUNNING, Status.STOPPED, Status.STARTING)
        or ended(workspace)
    ):
        raise NotFound(f"sandbox {sandbox_id} not found")
    return workspace


def _snapshot_of(mgr: WorkspaceManager, owner: str, template: str) -> str | None:
    """The id of the owner's snapshot a template names (E2B's `Sandbox.create(snapshot_id)`), by id or name; None
    for anything else (an image). E2B's own templates come first; a snapshot's id or name has no '/' or ':'."""
    if template in (BASE_TEMPLATE, INTERPRETER_TEMPLATE) or "/" in template or ":" in template:
        return None
    try:
        found: str = mgr.snapshots.get(owner, template).id
    except NotFound:
        if SNAPSHOT_ID.fullmatch(template):  # not an image's name: say what it is not
            raise BadRequest(
                f"template {template!r}: no snapshot of yours with this id (deleted, or another owner's): "
                "Sandbox.list_snapshots() lists yours"
            ) from None
        return None
    return found


def _template_of(mgr: WorkspaceManager, owner: str, ref: str) -> str | None:
    """The id of the owner's template `ref` names (`name` or `name:tag`); None for anything else (an image: a
    name with a `/` is one, so that `repo/name:tag` never finds a template `name:tag`)."""
    if ref in (BASE_TEMPLATE, INTERPRETER_TEMPLATE) or "/" in ref:
        return None
    name, _, tag = ref.partition(":")
    try:
        return mgr.templates.get(owner, f"{name}:{tag or 'latest'}").id
    except NotFound:
        return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _image(template: str, mgr: WorkspaceManager) -> str:
    # Every sandbox has the code interpreter (interpreter.py): its template is the base image.
    return mgr.settings.e2b_base_image if template in (BASE_TEMPLATE, INTERPRETER_TEMPLATE) else template


def ended(workspace: Workspace) -> bool:
    """Past its end: E2B's sandbox is gone at its timeout, though the reaper's next round removes it."""
    return workspace.expires_at is not None and workspace.expires_at <= utcnow()


def home_of(workspace: Workspace, settings: Settings) -> str:
    """The user's home, where envd's relative paths start: E2B's in its `base` template, else /workspace."""
    return E2B_HOME if workspace.image == settings.e2b_base_image else "/workspace"


#: template id -> its name:tag, for the sandboxes made from it (a template's id never changes its name).
_TEMPLATE_NAMES: dict[str, str] = {}


def _template(workspace: Workspace, mgr: WorkspaceManager) -> str:
    if workspace.image == mgr.settings.e2b_base_image:
        return BASE_TEMPLATE
    if not is_template_image(workspace.image):
        return workspace.image
    # A template's sandbox shows the name it was made by (E2B's templateID for a template built through its API).
    template_id = workspace.image.rpartition(":")[2]
    if template_id not in _TEMPLATE_NAMES:
        with mgr.store.session() as session:
            row = session.get(Template, template_id)
            if row is None:  # deleted since: its image's name is all there is
                return workspace.image
            _TEMPLATE_NAMES[template_id] = row.name if row.tag == "latest" else f"{row.name}:{row.tag}"
    return _TEMPLATE_NAMES[template_id]


def _state(workspace: Workspace) -> str:
    return "paused" if workspace.status == Status.STOPPED else "running"


def _sandbox(workspace: Workspace, mgr: WorkspaceManager, who: Caller, tokens: Tokens) -> dict[str, Any]:
    return {
        "sandboxID": workspace.id,
        "templateID": _template(workspace, mgr),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": access.envd_token(tokens, who, workspace.id),
        # Given for public sandboxes too (E2B gives none): the code interpreter's SDK sends it on its context
        # calls, which carry no access token, and the interpreter is closed to anyone without one of the two.
        "trafficAccessToken": access.traffic_token(tokens, who, workspace.id),
        "domain": mgr.settings.preview_domain or None,
    }


def _listed(workspace: Workspace, mgr: WorkspaceManager) -> dict[str, Any]:
    end: datetime | None = workspace.expires_at
    return {
        "sandboxID": workspace.id,
        "templateID": _template(workspace, mgr),
        "clientID": CLIENT_ID,
        "startedAt": workspace.created_at.isoformat(),
        "endAt": (end or workspace.created_at).isoformat(),
        "cpuCount": max(1, int(workspace.cpu)),
        "memoryMB": workspace.memory >> 20,
        "diskSizeMB": workspace.disk >> 20,
        "state": _state(workspace),
        "envdVersion": ENVD_VERSION,
        "metadata": dict(workspace.labels),
        "lifecycle": {
            "onTimeout": "pause" if workspace.pause_at_end else "kill",
            "autoResume": bool(workspace.pause_at_end and workspace.pause_at_end.get("auto_resume")),
        },
        **({} if workspace.memory_kept is None else {"pauseMode": "full" if workspace.memory_kept else "filesystem"}),
    }
