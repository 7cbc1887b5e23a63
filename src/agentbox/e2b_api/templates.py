"""E2B's template build API (what the SDK's `Template.build`, `build_in_background`, `get_build_status` and
`exists` call), served by agentbox's own templates (workspaces/templates.py, /api/v1/templates).

The SDK's flow is three calls and a poll: `POST /v3/templates` (a name and tags: a build is requested, no steps
yet), `GET /templates/{id}/files/{hash}` for each COPY (whether the files are here already, and where to upload
their tar if not: a signed URL of this server, `PUT` without the API key), `POST /v2/templates/{id}/builds/{build}`
(the steps, the base, the start and ready commands), then `GET /templates/{id}/builds/{build}/status` until the
build ends. Here the steps are rendered as a Dockerfile (FROM the base, RUN, ENV, WORKDIR, USER, COPY) whose
context is the uploaded tars together, and built by agentbox's builder (under gVisor, no network, no pulls), as an
agentbox template named `name:tag`: `Sandbox.create("name")` (control.py) is then a workspace of that template,
its start command running and its ready command passed.

State between the calls (a requested build, the uploaded files) lives in the data directory, which replicas share
(docs/architecture.md, "Replicas"): `e2b-templates/builds/{build id}.json`, `e2b-templates/files/{owner}/{hash}`.
A template's E2B id is its name. Errors are E2B's shape (control.py); another owner's build or template is a 404.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import re
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentbox.db.models import Template
from agentbox.e2b_api import control
from agentbox.e2b_api.control import PREFIX, E2BError, Manager, Signer, Who
from agentbox.errors import AgentboxError, NotFound
from agentbox.web.dependencies import in_thread
from agentbox.wire.sizes import format_size
from agentbox.wire.templates import DEFAULT_TAG, CreateTemplate
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.templates import BUILDING, FAILED, READY

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: The token's use in a signed upload URL, and how long such a URL works.
UPLOAD_USE = "e2b-template-upload"
UPLOAD_SECONDS = 3600
#: E2B's own base images and templates, which stand for the `base` image here (control.BASE_TEMPLATE).
E2B_BASES = frozenset(["e2bdev/base", "e2bdev/base:latest", "e2bdev/code-interpreter", control.BASE_TEMPLATE])
#: The status route's default page of log entries (E2B's: the SDK polls until a page comes back empty).
LOG_PAGE = 100
#: Lines of the log given with a failed build's reason.
REASON_LINES = 20
_HASH = re.compile(r"[0-9a-f]{64}")
_STEP_LINE = re.compile(r"^Step (\d+)/\d+ : ", re.MULTILINE)
#: The SDK's `wait_for_port(port)`, which needs `ss` (iproute2), not in the base image (nor installable offline).
_WAIT_FOR_PORT = re.compile(r'\[ -n "\$\(ss -Htuln sport = :(\d{1,5})\)" \]')


def ready_command(given: str) -> str:
    """The ready command as run here: the SDK's `wait_for_port` reads the kernel's socket tables itself when the
    image has no `ss` (a TCP socket listening on the port, as `ss -tl` shows it; gVisor keeps /proc/net too)."""
    port = _WAIT_FOR_PORT.fullmatch(given.strip())
    if port is None:
        return given
    hexed = f"{int(port.group(1)):04X}"
    listening = (
        "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk "
        f'\'$4 == "0A" && toupper(substr($2, index($2, ":") + 1)) == "{hexed}" {{ found = 1 }} '
        "END { exit !found }'"
    )
    return f"if command -v ss >/dev/null; then {given}; else {listening}; fi"


class BuildRequest(BaseModel):
    """E2B's `TemplateBuildRequestV3` (v2's `alias` is read as the name)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = Field(None, max_length=256)
    alias: str | None = Field(None, max_length=256)
    tags: list[str] | None = Field(None, max_length=16)
    cpu_count: int | None = Field(None, alias="cpuCount")
    memory_mb: int | None = Field(None, alias="memoryMB")


class Step(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: str
    args: list[str] = Field(default_factory=list)
    files_hash: str | None = Field(None, alias="filesHash")


class BuildStart(BaseModel):
    """E2B's `TemplateBuildStartV2`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_image: str | None = Field(None, alias="fromImage", max_length=512)
    from_template: str | None = Field(None, alias="fromTemplate", max_length=512)
    from_image_registry: dict[str, Any] | None = Field(None, alias="fromImageRegistry")
    start_cmd: str | None = Field(None, alias="startCmd")
    ready_cmd: str | None = Field(None, alias="readyCmd")
    steps: list[Step] = Field(default_factory=list, max_length=1000)
    force: bool = False


# The store of requested builds and uploaded files (the data directory, shared by replicas)


def _root(mgr: WorkspaceManager) -> Path:
    return Path(mgr.settings.data_dir) / "e2b-templates"


def _owner_key(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:24]


def _file_path(mgr: WorkspaceManager, owner: str, files_hash: str) -> Path:
    return _root(mgr) / "files" / _owner_key(owner) / files_hash


def _build_path(mgr: WorkspaceManager, build_id: str) -> Path:
    return _root(mgr) / "builds" / f"{build_id}.json"


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a reader on another replica never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    partial.write_bytes(data)
    os.replace(partial, path)


#: How long an upload is kept since it was last asked for or used, and a requested build's record since made.
FILES_KEPT = 24 * 3600.0
BUILDS_KEPT = 7 * 24 * 3600.0
#: How often (at most, per replica) a request for a build looks for expired ones.
PRUNE_EVERY = 600.0
_pruned_at = 0.0


def _present(path: Path) -> bool:
    """Whether an upload is here; one that is counts as used now (kept FILES_KEPT from now)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _prune(mgr: WorkspaceManager) -> None:
    """Uploads not asked for or used for FILES_KEPT, and records of builds older than BUILDS_KEPT, removed."""
    global _pruned_at
    now = time.time()
    if now - _pruned_at < PRUNE_EVERY:
        return
    _pruned_at = now
    root = _root(mgr)
    for pattern, kept in (("files/*/*", FILES_KEPT), ("builds/*.json", BUILDS_KEPT)):
        for path in root.glob(pattern):
            try:
                if now - path.stat().st_mtime > kept:
                    path.unlink()
            except FileNotFoundError:
                pass  # another replica's prune


def _record(mgr: WorkspaceManager, owner: str, template_id: str, build_id: str) -> dict[str, Any]:
    """The owner's requested build; E2B's 404 for any other (another owner's, unknown, or another template's)."""
    try:
        uuid.UUID(build_id)
        record: dict[str, Any] = json.loads(_build_path(mgr, build_id).read_text())
    except (ValueError, OSError):
        record = {}
    if record.get("owner") != owner or record.get("name") != _name_of(template_id)[0]:
        raise E2BError(404, f"build {build_id} of template {template_id!r} not found")
    return record


# Names


def _name_of(given: str) -> tuple[str, str | None]:
    """E2B's `team/name:tag` as agentbox's name and tag (no teams here)."""
    name, _, tag = given.rsplit("/", 1)[-1].partition(":")
    return name, (tag or None)


def _checked(name: str, tag: str) -> None:
    """E2B's 400 naming what is wrong with a name or tag, by agentbox's rules for templates."""
    try:
        CreateTemplate.model_validate({"name": name, "tag": tag, "dockerfile": "FROM scratch"})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise E2BError(400, f"{field} {first['input']!r}: {first['msg'].removeprefix('Value error, ')}") from None


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return await in_thread(function, *args)
    except AgentboxError as exc:
        raise E2BError(400 if exc.status_code == 422 else exc.status_code, exc.detail) from None


# The routes


@router.post("/v3/templates", status_code=202)
@router.post("/v2/templates", status_code=202)
async def request_build(body: BuildRequest, mgr: Manager, who: Who) -> dict[str, Any]:
    """A build is requested: its ids, nothing built yet (the steps come with `POST .../builds/{build}`)."""
    given = body.name or body.alias
    if not given:
        raise E2BError(400, "name: give the template a name (Template.build(template, 'my-template'))")
    name, tag = _name_of(given)
    tags = list(dict.fromkeys(([tag] if tag else []) + list(body.tags or [])))
    if len(tags) > 1:
        raise E2BError(
            400,
            f"tags {tags}: agentbox builds one tag per build (its templates are name:tag): build once per tag",
        )
    tag = tags[0] if tags else DEFAULT_TAG
    _checked(name, tag)
    await in_thread(_prune, mgr)
    build_id = str(uuid.uuid4())
    record: dict[str, Any] = {"owner": who.owner, "name": name, "tag": tag, "template": None, "steps": {}}
    await in_thread(_write, _build_path(mgr, build_id), json.dumps(record).encode())
    return {"templateID": name, "buildID": build_id, "public": False, "names": [name], "tags": [tag], "aliases": [name]}


@router.get("/templates/{template_id}/files/{files_hash}", status_code=201)
async def file_upload_link(
    template_id: str, files_hash: str, request: Request, mgr: Manager, who: Who, tokens: Signer
) -> dict[str, Any]:
    """Whether a COPY's files (by the SDK's hash of them) are here, and a signed URL to `PUT` their tar to."""
    if not _HASH.fullmatch(files_hash):
        raise E2BError(400, f"hash {files_hash!r}: the SDK's files hash is 64 hex digits (sha256)")
    name, _ = _name_of(template_id)
    present = await in_thread(_present, _file_path(mgr, who.owner, files_hash))
    token, _ = tokens.mint(who, UPLOAD_USE, UPLOAD_SECONDS, hash=files_hash, template=name)
    url = str(request.url_for("upload_files", files_hash=files_hash).include_query_params(token=token))
    return {"present": present, "url": url}


@router.put("/template-files/{files_hash}", name="upload_files")
async def upload_files(files_hash: str, request: Request, mgr: Manager, tokens: Signer, token: str = "") -> Response:
    """The tar of a COPY's files, as the SDK uploads it (no API key: the URL's token says whose)."""
    caller = tokens.check(token, UPLOAD_USE, hash=files_hash)
    if caller is None or not _HASH.fullmatch(files_hash):
        raise E2BError(403, "this upload URL is not valid (expired, or its API key revoked): build again")
    limit = mgr.settings.max_template_context
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise E2BError(413, f"the files of a COPY: more than {format_size(limit)} (WORKSPACE_MAX_TEMPLATE_CONTEXT)")
    try:
        await in_thread(_tar_members, bytes(data))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise E2BError(400, f"the upload is not a tar archive (plain or gzip'd): {exc}") from None
    await in_thread(_write, _file_path(mgr, caller.owner, files_hash), bytes(data))
    return Response(status_code=200)


@router.post("/v2/templates/{template_id}/builds/{build_id}", status_code=202)
@router.post("/templates/{template_id}/builds/{build_id}", status_code=202)
async def start_build(template_id: str, build_id: str, body: BuildStart, mgr: Manager, who: Who) -> Response:
    """The steps rendered as a Dockerfile and built as the owner's agentbox template `name:tag`."""
    record = await in_thread(_record, mgr, who.owner, template_id, build_id)
    if record["template"] is not None:
        raise E2BError(409, f"build {build_id} was started already: request a new build")
    dockerfile, context, steps, workdir = await _call(_render, mgr, who.owner, body)
    # E2B runs the start and ready commands in the template's working directory; agentbox's in the workspace's.
    where = f"cd {shlex.quote(workdir)} && " if workdir else ""
    name, tag = record["name"], record["tag"]
    await _call(_replace, mgr, who.owner, name, tag)
    try:
        spec = CreateTemplate.model_validate(
            dict(
                name=name,
                tag=tag,
                dockerfile=dockerfile,
                context=base64.b64encode(context).decode(),
                start_cmd=where + body.start_cmd if body.start_cmd else None,
                ready_cmd=where + ready_command(body.ready_cmd) if body.ready_cmd else None,
            )
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = {"start_cmd": "startCmd", "ready_cmd": "readyCmd"}.get(str(first["loc"][0]), str(first["loc"][0]))
        raise E2BError(400, f"{field}: {first['msg']}") from None
    template: Template = await _call(mgr.templates.create, who.owner, spec)
    record.update(template=template.id, steps=steps)
    await in_thread(_write, _build_path(mgr, build_id), json.dumps(record).encode())
    return Response(status_code=202)


@router.get("/templates/{template_id}/builds/{build_id}/status")
async def build_status(
    template_id: str,
    build_id: str,
    mgr: Manager,
    who: Who,
    logs_offset: Annotated[int, Query(alias="logsOffset", ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=LOG_PAGE)] = LOG_PAGE,
) -> dict[str, Any]:
    """waiting (requested, not started), building, ready or error, with the log's entries from `logsOffset`."""
    record = await in_thread(_record, mgr, who.owner, template_id, build_id)
    answer: dict[str, Any] = {"templateID": record["name"], "buildID": build_id, "logEntries": [], "logs": []}
    if record["template"] is None:
        return {**answer, "status": "waiting"}
    try:
        template: Template = await in_thread(mgr.templates.get, who.owner, record["template"])
    except NotFound:
        raise E2BError(404, f"template {template_id!r} was deleted since this build") from None
    lines = template.log.splitlines()
    if template.status == BUILDING and lines and not template.log.endswith("\n"):
        lines.pop()  # a line still being written: given whole at a later poll (the SDK counts entries, not text)
    when = (template.built_at or template.created_at).astimezone(UTC).isoformat()
    level = "error" if template.status == FAILED else "info"
    entries = [_entry(line, when, "info") for line in lines[logs_offset : logs_offset + limit]]
    answer.update(
        logEntries=entries,
        logs=[line + "\n" for line in lines[logs_offset : logs_offset + limit]],
        status={BUILDING: "building", READY: "ready", FAILED: "error"}[template.status],
    )
    if template.status == FAILED:
        answer["reason"] = {
            "message": template.error or "the build failed",
            "logEntries": [_entry(line, when, level) for line in lines[-REASON_LINES:]],
            **({"step": step} if (step := _failed_step(template.log, record["steps"])) else {}),
        }
    return answer


@router.get("/templates/aliases/{alias}")
async def template_alias(alias: str, mgr: Manager, who: Who) -> dict[str, Any]:
    """Whether a template exists (the SDK's `Template.exists`): one of the owner's, built or building; else what
    control.py answers (`base`, an image on the engine)."""
    name, tag = _name_of(alias)
    if alias != control.BASE_TEMPLATE:
        try:
            await in_thread(mgr.templates.get, who.owner, f"{name}:{tag or DEFAULT_TAG}")
        except NotFound:
            pass
        else:
            return {"templateID": name, "public": False}
    return await control.template_alias(alias, mgr, who)


# The rendering


def _entry(line: str, when: str, level: str) -> dict[str, Any]:
    return {"timestamp": when, "level": level, "message": line}


def _failed_step(log: str, steps: dict[str, str]) -> str | None:
    """The E2B step (its index as the SDK counts them: 0 the base) of the last Dockerfile step the log began."""
    begun = _STEP_LINE.findall(log)
    return steps.get(begun[-1]) if begun else None


def _tar_members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        return archive.getmembers()


def _base(mgr: WorkspaceManager, owner: str, body: BuildStart) -> str:
    if body.from_image_registry:
        raise E2BError(
            400,
            "fromImageRegistry: builds here never pull, so registry credentials have no use: start from an image "
            "on the agentbox server's engine (Template().from_image(name) without username and password)",
        )
    if body.from_template:
        if body.from_template in E2B_BASES:
            return mgr.settings.e2b_base_image
        name, tag = _name_of(body.from_template)
        try:
            found = mgr.templates.get(owner, f"{name}:{tag or DEFAULT_TAG}")
        except NotFound:
            raise E2BError(
                400, f"fromTemplate {body.from_template!r}: no template of yours by that name (nor `base`)"
            ) from None
        if found.status != READY:
            raise E2BError(400, f"fromTemplate {body.from_template!r}: it is {found.status}, not built")
        return found.image
    image = body.from_image or "e2bdev/base"
    return mgr.settings.e2b_base_image if image in E2B_BASES else image


def _image_user(mgr: WorkspaceManager, image: str) -> str:
    """The user an image's processes run as (for putting it back after a RUN as another user)."""
    client = getattr(mgr.templates.builder(), "client", None)
    try:
        config = client.images.get(image).attrs.get("Config") or {} if client is not None else {}
    except Exception:  # the base's check (in the build's create) says what is wrong with it
        config = {}
    return str(config.get("User") or "root")


def _render(mgr: WorkspaceManager, owner: str, body: BuildStart) -> tuple[str, bytes, dict[str, str], str | None]:
    """The Dockerfile, its context (the COPY steps' uploaded tars together), for each of its steps (the builder's
    `Step N/M`) the E2B step it came from, and the template's working directory if it set one."""
    base = _base(mgr, owner, body)
    lines = [f"FROM {base}"]
    origin = {"1": "base"}
    user: str | None = None  # the user the template set last (None: the image's)
    workdir: str | None = None  # the template's last WORKDIR (None: it set none)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as merged:
        seen: set[str] = set()
        for index, step in enumerate(body.steps, 1):
            kind, args, where = step.type.upper(), step.args, f"steps[{index - 1}] ({step.type})"
            rendered: list[str]
            if any("\n" in arg or "\r" in arg for arg in args) and kind != "RUN":
                raise E2BError(400, f"{where}: an argument holds a line break")
            if kind == "RUN":
                if not args or not args[0].strip():
                    raise E2BError(400, f"{where}: no command")
                run = "RUN " + json.dumps(["/bin/sh", "-c", args[0]])
                if len(args) > 1 and args[1]:
                    back = user if user is not None else _image_user(mgr, base)
                    rendered = [f"USER {args[1]}", run, f"USER {back}"]
                else:
                    rendered = [run]
            elif kind == "ENV":
                if not args or len(args) % 2:
                    raise E2BError(400, f"{where}: takes name and value pairs")
                rendered = [
                    "ENV "
                    + " ".join(f"{key}={json.dumps(value)}" for key, value in zip(args[::2], args[1::2], strict=True))
                ]
            elif kind == "WORKDIR":
                if len(args) != 1 or not args[0]:
                    raise E2BError(400, f"{where}: takes one path")
                rendered = [f"WORKDIR {args[0]}"]
                workdir = posixpath.join(workdir or "/", args[0])
            elif kind == "USER":
                if len(args) != 1 or not re.fullmatch(r"[A-Za-z0-9_.:-]+", args[0]):
                    raise E2BError(400, f"{where}: takes one user name (or uid), optionally :group")
                user = args[0]
                rendered = [f"USER {user}"]
            elif kind == "COPY":
                rendered = [_copy(mgr, owner, step, where, merged, seen)]
            else:
                raise E2BError(
                    400, f"{where}: unknown step type {step.type!r} (agentbox builds COPY, ENV, RUN, USER, WORKDIR)"
                )
            for line in rendered:
                lines.append(line)
                origin[str(len(lines))] = str(index)
    dockerfile = "\n".join(lines) + "\n"
    return dockerfile, context.getvalue(), origin, workdir


def _copy(mgr: WorkspaceManager, owner: str, step: Step, where: str, merged: tarfile.TarFile, seen: set[str]) -> str:
    args = [*step.args, "", "", "", ""]
    source, destination, owner_of, mode = args[:4]
    if not source or not destination:
        raise E2BError(400, f"{where}: needs a source and a destination")
    if owner_of or mode:
        raise E2BError(
            400,
            f"{where}: COPY with a user or mode is not offered by agentbox's builder: copy, then "
            f"run_cmd('chown ...' or 'chmod ...', user='root')",
        )
    if not step.files_hash or not _HASH.fullmatch(step.files_hash):
        raise E2BError(400, f"{where}: no filesHash (the SDK sends the hash of the files it uploads)")
    path = _file_path(mgr, owner, step.files_hash)
    try:
        data = path.read_bytes()
        os.utime(path)
    except FileNotFoundError:
        raise E2BError(
            400, f"{where}: the files of COPY {source} were not uploaded (GET /templates/{{id}}/files/{{hash}})"
        ) from None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        members = {posixpath.normpath(m.name): m for m in archive.getmembers()}
        for member in members.values():
            if member.name in seen:
                continue
            if member.issym():
                # The builder copies regular files only: a link to a file in the same upload becomes a copy of
                # that file (what reading it gives); one to anything else (outside the upload, dangling) is left out.
                target = members.get(
                    posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
                )
                if target is None or not target.isfile():
                    continue
                copied = tarfile.TarInfo(member.name)
                copied.size, copied.mode = target.size, target.mode
                seen.add(member.name)
                merged.addfile(copied, archive.extractfile(target))
            elif member.isfile() or member.isdir():
                seen.add(member.name)
                merged.addfile(member, archive.extractfile(member) if member.isfile() else None)
    if re.search(r"[*?\[]", source) and not destination.endswith("/"):
        # A pattern copies into the destination as a directory on E2B, however many files it matches (the
        # engine's rule would make a single match the destination file itself).
        destination += "/"
    return "COPY " + json.dumps([source, destination])


def _replace(mgr: WorkspaceManager, owner: str, name: str, tag: str) -> None:
    """A build of a name:tag the owner has already replaces it, as E2B's does (a 409 while it builds or is used)."""
    try:
        mgr.templates.get(owner, f"{name}:{tag}")
    except NotFound:
        return
    mgr.templates.delete(owner, f"{name}:{tag}")


# Tags: agentbox's templates are name:tag, each its own image, so a tag assigned is a template of its own built
# FROM the target's image (no steps: a second or so, nothing run), with its start and ready commands.

#: How long an assignment waits for its tags' builds.
TAG_WAIT = 120.0


class AssignTags(BaseModel):
    model_config = ConfigDict(extra="ignore")

    target: str = Field(min_length=1, max_length=256)
    tags: list[str] = Field(min_length=1, max_length=16)


class RemoveTags(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    tags: list[str] = Field(min_length=1, max_length=16)


def build_id_of(template: Template) -> str:
    """The E2B build id (a UUID) that stands for an agentbox template (one build each)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"agentbox-template:{template.id}"))


def _assign(mgr: WorkspaceManager, owner: str, target: str, tags: list[str]) -> Template:
    name, tag = _name_of(target)
    try:
        source = mgr.templates.get(owner, f"{name}:{tag or DEFAULT_TAG}")
    except NotFound:
        raise E2BError(404, f"template {target!r} not found") from None
    if source.status != READY:
        raise E2BError(400, f"template {target!r} is {source.status}: tags are assigned to a built template")
    for new in tags:
        _checked(name, new)
    for new in tags:
        if new == source.tag:
            continue
        _replace(mgr, owner, name, new)
        spec = CreateTemplate.model_validate(
            {
                "name": name,
                "tag": new,
                "dockerfile": f"FROM {source.image}\n",
                "start_cmd": source.start_cmd,
                "ready_cmd": source.ready_cmd,
                "ready_timeout": source.ready_timeout,
            }
        )
        made = mgr.templates.create(owner, spec)
        deadline = time.monotonic() + TAG_WAIT
        while made.status == BUILDING and time.monotonic() < deadline:
            time.sleep(0.2)
            made = mgr.templates.get(owner, made.id)
        if made.status != READY:
            raise E2BError(500, f"tag {new!r}: {made.error or 'its build did not end in time'}")
    return source


@router.post("/templates/tags", status_code=201)
async def assign_tags(body: AssignTags, mgr: Manager, who: Who) -> dict[str, Any]:
    source: Template = await _call(_assign, mgr, who.owner, body.target, body.tags)
    return {"buildID": build_id_of(source), "tags": body.tags}


@router.delete("/templates/tags", status_code=204)
async def remove_tags(body: RemoveTags, mgr: Manager, who: Who) -> Response:
    name, _ = _name_of(body.name)

    def remove() -> None:
        for tag in body.tags:
            try:
                mgr.templates.delete(who.owner, f"{name}:{tag}")
            except NotFound:
                raise E2BError(404, f"template {name}:{tag} not found") from None

    await _call(remove)
    return Response(status_code=204)


@router.get("/templates/{template_id}/tags")
async def template_tags(template_id: str, mgr: Manager, who: Who) -> list[dict[str, Any]]:
    name, _ = _name_of(template_id)
    found: list[Template] = [t for t in await in_thread(mgr.templates.list, who.owner) if t.name == name]
    if not found:
        raise E2BError(404, f"template {template_id!r} not found")
    return [
        {"tag": t.tag, "buildID": build_id_of(t), "createdAt": t.created_at.astimezone(UTC).isoformat()} for t in found
    ]
