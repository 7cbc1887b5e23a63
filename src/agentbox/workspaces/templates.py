"""Templates (issue 30): an owner's workspace images, built from a Dockerfile and a context archive by the
provider that builds them (the Docker providers: the engine's builder, providers/docker/images.py), each with
a start command (started in the background in every workspace made from it) and a ready command (run until it
exits 0 before such a workspace is handed out). Versioned by name and tag; deleted once no workspace uses it.

A build runs in a thread of this server's own (at most WORKSPACE_MAX_BUILDS at once, counted from the rows
under the admission lock, so across replicas too); its log goes into the template's row as it comes (the last
LOG_KEPT characters, with the count of all of them), where any replica's follower reads it.

Blocking, like the manager: called in worker threads.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import io
import logging
import shlex
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentbox.db.models import Template, Workspace, new_template_id, utcnow
from agentbox.db.store import LIVE
from agentbox.errors import (
    AgentboxError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    TooManyWorkspaces,
    Unprocessable,
    reason_of,
)
from agentbox.providers.base import ImageBuild, Provider
from agentbox.sandbox.process_table import ProcessRequest
from agentbox.wire.domain import Command, NewWorkspace
from agentbox.wire.sizes import format_size
from agentbox.wire.templates import DEFAULT_TAG, CreateTemplate

if TYPE_CHECKING:
    from agentbox.workspaces.handle import WorkspaceHandle
    from agentbox.workspaces.manager import WorkspaceManager

log = logging.getLogger("agentbox.workspaces.templates")

#: The engine's repository of template images; the tag is the template's id, so that no two owners' templates
#: (nor two versions) ever share a name, and a workspace's image column says which template it came from.
IMAGE_REPOSITORY = "agentbox/template"
#: Characters of a build's log kept in its row (the last ones).
LOG_KEPT = 64 * 1024
#: How often a build's log is written to its row while it comes.
LOG_FLUSH_SECONDS = 0.25
#: How often a ready command is run until it passes.
READY_EVERY = 0.5
#: Instructions the engine's Dockerfile parser knows (Docker 20.10, classic builder).
INSTRUCTIONS = frozenset(
    [
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ]
)
BUILDING, READY, FAILED = "building", "ready", "failed"


#: The tag of a template's start command among a workspace's background processes.
START_TAG = "template-start"


def image_of(template_id: str) -> str:
    return f"{IMAGE_REPOSITORY}:{template_id}"


def is_template_image(image: str | None) -> bool:
    return bool(image) and str(image).startswith(IMAGE_REPOSITORY + ":")


def dockerfile_bases(text: str) -> list[str]:
    """The images the Dockerfile's stages start FROM (its own stages and names with variables left out).
    Unprocessable (422) with the line and what is wrong when it does not parse as the engine would."""
    try:
        structure = DockerfileParser(fileobj=io.BytesIO(text.encode())).structure
    except Exception as exc:  # the parser's own failures: anything it cannot read is the caller's to fix
        raise Unprocessable(f"dockerfile: it does not parse: {exc}") from None
    bases: list[str] = []
    stages: set[str] = set()
    seen_from = False
    for item in structure:
        instruction, value, line = str(item["instruction"]).upper(), str(item["value"]).strip(), item["startline"] + 1
        where = f"dockerfile, line {line}"
        if instruction == "COMMENT":  # the parser's name for comment lines (parser directives among them)
            continue
        if instruction not in INSTRUCTIONS:
            raise Unprocessable(
                f"{where}: unknown instruction {item['instruction']!r} (the instructions are "
                f"{', '.join(sorted(INSTRUCTIONS))})"
            )
        if not value:
            raise Unprocessable(f"{where}: {instruction} needs an argument")
        if not seen_from and instruction not in ("ARG", "FROM"):
            raise Unprocessable(f"{where}: {instruction} before any FROM: a Dockerfile starts FROM an image")
        if instruction in ("COPY", "ADD") and len(value.split()) < 2 and not value.startswith("["):
            raise Unprocessable(f"{where}: {instruction} needs a source and a destination")
        if instruction == "FROM":
            seen_from = True
            words = [w for w in value.split() if not w.startswith("--")]
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise Unprocessable(f"{where}: FROM takes an image and, optionally, AS name")
            if len(words) == 3:
                stages.add(words[2].lower())
            base = words[0]
            if base.lower() not in stages and "$" not in base and base not in bases:
                bases.append(base)
    if not seen_from:
        raise Unprocessable("dockerfile: no FROM: a Dockerfile starts FROM an image")
    return bases


#: What a context may come to unpacked, against what it may be packed (WORKSPACE_MAX_TEMPLATE_CONTEXT): a few
#: MiB of gzip can unpack to GiBs, which a build holds in memory or hands the engine. And its entries at most.
UNPACKED_RATIO = 16
MAX_CONTEXT_ENTRIES = 10_000


def _check_tar(context: bytes, packed_limit: int) -> None:
    """Unprocessable (422) unless `context` is a whole tar archive, plain or gzip'd; PayloadTooLarge (413) when
    it unpacks to more than UNPACKED_RATIO times `packed_limit` or holds more than MAX_CONTEXT_ENTRIES entries.
    Refused before any build; the archive is read only as far as those limits."""
    limit, unpacked, entries = UNPACKED_RATIO * packed_limit, 0, 0
    try:
        with tarfile.open(fileobj=io.BytesIO(context), mode="r:*") as archive:
            while (member := archive.next()) is not None:
                entries += 1
                unpacked += member.size if member.isfile() else 0
                if unpacked > limit or entries > MAX_CONTEXT_ENTRIES:
                    raise PayloadTooLarge(
                        f"context: unpacks to more than {format_size(limit)} or {MAX_CONTEXT_ENTRIES} entries "
                        f"(at most {UNPACKED_RATIO}x WORKSPACE_MAX_TEMPLATE_CONTEXT); leave out what the build does "
                        "not need"
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise Unprocessable(f"context: not a tar archive (plain or gzip'd): {exc}") from None


@dataclass
class _LogWriter:
    """A build's log, written to its row every LOG_FLUSH_SECONDS and at its end."""

    templates: Templates
    template_id: str
    pending: str = ""
    flushed_at: float = 0.0

    def __call__(self, text: str) -> None:
        self.pending += text
        if time.monotonic() - self.flushed_at >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        text, self.pending = self.pending, ""
        self.flushed_at = time.monotonic()
        with self.templates.store.session() as session:
            row = session.get(Template, self.template_id)
            if row is not None:
                row.log = (row.log + text)[-LOG_KEPT:]
                row.log_size = row.log_size + len(text)


@dataclass(frozen=True)
class LogPiece:
    """What a follower of a build's log gets: the text from `offset` (after `resumed_at` when the start is gone),
    and the template's status."""

    offset: int
    text: str
    resumed_at: int | None
    status: str
    error: str | None


class Templates:
    def __init__(self, manager: WorkspaceManager) -> None:
        self.manager = manager
        self.settings = manager.settings
        self.store = manager.store
        self._builds = ThreadPoolExecutor(max_workers=self.settings.max_builds, thread_name_prefix="template-build")
        self._lock = threading.Lock()

    def builder(self) -> Provider:
        """The provider that builds templates (the default provider's scope first). BadRequest when none here does."""
        providers = self.manager.providers
        ordered = sorted(providers.values(), key=lambda p: p.name != self.settings.default_provider)
        for provider in ordered:  # the first: `distinct` would keep the last of a scope
            if provider.capabilities().templates:
                return provider
        raise BadRequest(
            f"no provider on this server builds templates (offered: {', '.join(sorted(providers)) or 'none'}): "
            "templates need the gvisor or docker provider (WORKSPACE_PROVIDERS)"
        )

    # The API's operations

    def create(self, owner: str, body: CreateTemplate) -> Template:
        """Check the Dockerfile and the context, add the row (`building`) and start the build; the row. 422 for
        a Dockerfile that does not parse or a context that is not a tar, 400 for a FROM not on the engine, 409 for
        a name and tag taken or WORKSPACE_MAX_TEMPLATES reached, 413 for sizes past the limits, 429 when
        WORKSPACE_MAX_BUILDS builds are under way."""
        s = self.settings
        if len(body.dockerfile.encode()) > s.max_dockerfile:
            raise PayloadTooLarge(f"dockerfile: more than {format_size(s.max_dockerfile)} (WORKSPACE_MAX_DOCKERFILE)")
        context = None
        if body.context is not None:
            try:
                context = base64.b64decode(body.context, validate=True)
            except (binascii.Error, ValueError):
                raise Unprocessable("context: not base64 (a tar archive, gzip'd or not, in base64)") from None
            if len(context) > s.max_template_context:
                raise PayloadTooLarge(
                    f"context: more than {format_size(s.max_template_context)} (WORKSPACE_MAX_TEMPLATE_CONTEXT)"
                )
            _check_tar(context, s.max_template_context)
        if body.pool_size > s.template_pool_size:
            raise Unprocessable(
                f"pool_size: at most {s.template_pool_size} on this server (WORKSPACE_TEMPLATE_POOL_SIZE)"
            )
        bases = dockerfile_bases(body.dockerfile)
        builder = self.builder()
        builder.check_bases(bases)
        builder.check_dockerfile(body.dockerfile)
        template_id = new_template_id()
        try:
            with self.store.admission():
                self._check_room(owner, body.name, body.tag)
                with self.store.session() as session:
                    session.add(
                        Template(
                            id=template_id,
                            owner=owner,
                            name=body.name,
                            tag=body.tag,
                            image=image_of(template_id),
                            start_cmd=body.start_cmd,
                            ready_cmd=body.ready_cmd,
                            ready_timeout=body.ready_timeout,
                            pool_size=body.pool_size,
                            status=BUILDING,
                            log="",
                            log_size=0,
                            replica=s.replica_id,
                        )
                    )
        except IntegrityError:
            raise self._taken(body.name, body.tag) from None
        build = ImageBuild(
            ref=image_of(template_id),
            dockerfile=body.dockerfile,
            context=context,
            labels={"agentbox.template": template_id, "agentbox.instance": s.instance_id},
            memory=s.template_build_memory,
            cpu=s.template_build_cpu,
            timeout=s.template_build_timeout,
            disk=s.template_build_disk,
        )
        self._builds.submit(self._build, builder, template_id, build)
        log.info("template %s (%s:%s) of %s: build started", template_id, body.name, body.tag, owner)
        return self.get(owner, template_id)

    def _build(self, builder: Provider, template_id: str, build: ImageBuild) -> None:
        writer = _LogWriter(self, template_id)
        try:
            image_id = builder.build_image(build, writer)
        except Exception as exc:
            writer.flush()
            error = exc.detail if isinstance(exc, AgentboxError) else reason_of(exc)
            log.info("template %s: build failed: %s", template_id, error)
            self._finish(template_id, status=FAILED, error=error)
            return
        writer.flush()
        if not self._finish(template_id, status=READY, image_id=image_id, built_at=utcnow()):
            builder.remove_image(build.ref)  # deleted while it was built
        else:
            log.info("template %s: built (%s)", template_id, image_id)
            self.manager.on_change()  # its pool, if it has one

    def _finish(self, template_id: str, **fields: object) -> bool:
        with self.store.session() as session:
            row = session.get(Template, template_id)
            if row is None:
                return False
            for name, value in fields.items():
                setattr(row, name, value)
            row.replica = None
            return True

    def recover(self, alive: set[str], startup: bool = False) -> None:
        """Builds whose replica is gone (not among `alive`; this one's own at its `startup`) ended with it: failed,
        and what they left on the engine removed. A restart is a new replica unless WORKSPACE_REPLICA_ID says, so
        its builds are found by the leader's round once its heartbeat is stale (replicas.py)."""
        own = self.settings.replica_id

        def gone(replica: str | None) -> bool:
            return replica is None or (startup if replica == own else replica not in alive)

        with self.store.session() as session:
            building = session.scalars(select(Template).where(Template.status == BUILDING))
            rows = [row for row in building if gone(row.replica)]
            for row in rows:
                row.status, row.error, row.replica = FAILED, "the server stopped during the build: build it again", None
            images = [row.image for row in rows]
        for image in images:
            log.warning("template image %s: its build ended with the server that ran it; removing what it left", image)
            with contextlib.suppress(AgentboxError):
                self.builder().remove_image(image)

    def list(self, owner: str) -> list[Template]:
        with self.store.session() as session:
            query = select(Template).where(Template.owner == owner).order_by(Template.name, Template.created_at)
            return list(session.scalars(query))

    def get(self, owner: str, ref: str) -> Template:
        """The owner's template with the id `ref`, or named `name[:tag]` (tag: latest). NotFound for any other."""
        template = self._find(owner, ref)
        if template is None:
            raise NotFound(f"no template {ref!r} of yours: list yours with GET /api/v1/templates")
        return template

    def delete(self, owner: str, ref: str) -> None:
        """Remove the template and its image. 409 while it builds, or naming the workspaces made from it."""
        template = self.get(owner, ref)
        if template.status == BUILDING:
            raise Conflict(f"template {template.name}:{template.tag} is being built: wait for its end, then delete it")
        builder = self.builder()
        with self.store.admission():  # no create from it passes in between
            users = self._users(template)
            if users:
                raise Conflict(
                    f"template {template.name}:{template.tag} is in use by workspace{'s' if len(users) > 1 else ''} "
                    f"{', '.join(users)}: delete {'them' if len(users) > 1 else 'it'} first"
                )
            with self.store.session() as session:
                row = session.get(Template, template.id)
                if row is not None:
                    session.delete(row)
        for pooled in self.store.find(owner="", statuses=("pooled",)):
            if pooled.image == template.image:
                from agentbox.workspaces.pool import discard_pooled

                discard_pooled(self.store, self.manager.providers.get(pooled.provider), pooled)
        builder.remove_image(template.image)
        log.info("template %s (%s:%s) of %s deleted", template.id, template.name, template.tag, owner)

    def pool_ready(self, templates: builtins.list[Template]) -> dict[str, int]:
        """template id -> its pool's workspaces that are ready (booted, started, passed its ready command)."""
        images = {t.image: t.id for t in templates if t.pool_size > 0}
        if not images:
            return {}
        with self.store.session() as session:
            query = select(Workspace.image, func.count()).where(
                Workspace.status == "pooled", Workspace.provider_ref.is_not(None), Workspace.image.in_(list(images))
            )
            return {images[image]: count for image, count in session.execute(query.group_by(Workspace.image))}

    def log_from(self, owner: str, ref: str, offset: int) -> LogPiece:
        """The build's log from character `offset` on (what is still kept of it)."""
        template = self.get(owner, ref)
        kept_from = template.log_size - len(template.log)
        start = max(offset, kept_from)
        return LogPiece(
            offset=start,
            text=template.log[start - kept_from :],
            resumed_at=kept_from if offset < kept_from else None,
            status=template.status,
            error=template.error,
        )

    # For a workspace's create (the manager's)

    def applied(self, owner: str, request: NewWorkspace) -> tuple[NewWorkspace, Template | None]:
        """`request` with its template's image, and the template (None when it names none). 404 for a template
        not the owner's, 409 for one not built, 422 for `image` or `snapshot` beside it, or a template's image
        named as a plain image."""
        if request.template is None:
            if is_template_image(request.image):
                raise Unprocessable("image: that is a template's image: name the template instead (`template`)")
            return request, None
        if request.image is not None or request.snapshot is not None:
            raise Unprocessable("template: a template gives the image: leave out `image` and `snapshot`")
        template = self.get(owner, request.template)
        if template.status != READY:
            hint = (
                "wait for its build to end (GET /api/v1/templates/{ref}/build-log)"
                if template.status == BUILDING
                else f"its build failed ({template.error}): fix the Dockerfile and build it again"
            )
            raise Conflict(f"template {template.name}:{template.tag} is {template.status}: {hint}")
        return replace(request, image=template.image), template

    def after_boot(self, owner: str, handle: WorkspaceHandle, image: str | None, then: str) -> None:
        """A workspace of a template that booted afresh (started again without its memory, or made from a snapshot
        that kept only files): its start command started again and its ready command waited for, as at its
        create. Nothing when its start command still runs (its memory was kept). Unprocessable (422) as
        `make_ready`, saying what `then` became of the workspace."""
        template = self._find(owner, image.partition(":")[2]) if image and is_template_image(image) else None
        if template is None or not (template.start_cmd or template.ready_cmd):
            return
        if template.start_cmd and any(p.tag == START_TAG and p.status == "running" for p in handle.processes().list()):
            return
        self.make_ready(handle, template, then)

    def make_ready(self, handle: WorkspaceHandle, template: Template, then: str = "it was removed") -> None:
        """Start the template's start command in the workspace, then run its ready command until it exits 0.
        Unprocessable (422) with the last output when it does not pass within the template's ready_timeout, saying
        what `then` became of the workspace."""
        if template.start_cmd:
            handle.start_process(ProcessRequest(argv=["sh", "-c", template.start_cmd], tag=START_TAG))
        if not template.ready_cmd:
            return
        deadline = time.monotonic() + template.ready_timeout
        last = ""
        while True:
            left = deadline - time.monotonic()
            result = handle.exec(Command(argv=["sh", "-c", template.ready_cmd], timeout=max(1.0, min(left, 30.0))))
            if result.exit_code == 0:
                return
            last = f"exit code {result.exit_code}: {(result.stderr or result.stdout).strip()[-500:]}"
            if time.monotonic() + READY_EVERY >= deadline:
                raise Unprocessable(
                    f"template {template.name}:{template.tag}: its ready command ({shlex.quote(template.ready_cmd)}) "
                    f"did not pass within {template.ready_timeout:g} s (the last run: {last}); {then}"
                )
            time.sleep(READY_EVERY)

    def close(self) -> None:
        self._builds.shutdown(wait=False, cancel_futures=True)

    # Helpers

    def _find(self, owner: str, ref: str) -> Template | None:
        with self.store.session() as session:
            if ref.startswith("tpl-"):
                return session.scalar(select(Template).where(Template.owner == owner, Template.id == ref))
            name, _, tag = ref.partition(":")
            query = select(Template).where(
                Template.owner == owner, Template.name == name, Template.tag == (tag or DEFAULT_TAG)
            )
            return session.scalar(query)

    def _check_room(self, owner: str, name: str, tag: str) -> None:
        with self.store.session() as session:
            count = session.scalar(select(func.count()).select_from(Template).where(Template.owner == owner)) or 0
            taken = session.scalar(
                select(Template.id).where(Template.owner == owner, Template.name == name, Template.tag == tag)
            )
            building = (
                session.scalar(select(func.count()).select_from(Template).where(Template.status == BUILDING)) or 0
            )
        if taken is not None:
            raise self._taken(name, tag)
        if count >= self.settings.max_templates:
            raise Conflict(
                f"you hold {count} templates, as many as this server allows (WORKSPACE_MAX_TEMPLATES): delete one first"
            )
        if building >= self.settings.max_builds:
            raise TooManyWorkspaces(
                f"{building} template builds are under way, as many as this server runs at once "
                "(WORKSPACE_MAX_BUILDS): try again once one has ended"
            )

    @staticmethod
    def _taken(name: str, tag: str) -> Conflict:
        return Conflict(
            f"you have a template {name}:{tag} already: choose another name or tag, or delete that one first"
        )

    def _users(self, template: Template) -> builtins.list[str]:
        with self.store.session() as session:
            query = select(Workspace.id).where(Workspace.image == template.image, Workspace.status.in_(list(LIVE)))
            return list(session.scalars(query.order_by(Workspace.created_at)))
