"""Template routes: build a template from a Dockerfile, follow its build's log, list, get and delete your
templates. A workspace is made from one by the create route (`template` in its body: api/workspaces.py)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from agentbox.db.models import Template
from agentbox.web.dependencies import Manager, Owner, in_thread
from agentbox.web.ndjson import json_line
from agentbox.web.openapi import errors, ndjson
from agentbox.wire.templates import BuildLogLine, CreateTemplate, TemplateList, TemplateOut

router = APIRouter(prefix="/api/v1/templates", tags=["templates"])

TemplateRef = Annotated[
    str, Path(min_length=1, max_length=129, description="the template's id (tpl-...), or name[:tag] (tag: latest)")
]
#: How often a follower of a build's log looks for more.
FOLLOW_EVERY = 0.25
_NO_BUILDS = (400, "No provider on this server builds templates (they need the gvisor or docker provider).")


def template_out(template: Template, pool_ready: dict[str, int] | None = None) -> TemplateOut:
    return TemplateOut.model_validate(template).model_copy(
        update={"pool_ready": (pool_ready or {}).get(template.id, 0)}
    )


def _with_pools(mgr: Manager, templates: list[Template]) -> list[TemplateOut]:
    ready = mgr.templates.pool_ready(templates)
    return [template_out(template, ready) for template in templates]


@router.post(
    "",
    summary="Build a template",
    status_code=201,
    response_model=TemplateOut,
    responses=errors(
        (400, "A FROM image that is not on this server's engine (builds never pull), or no provider builds."),
        (404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES)."),
        (409, "You have a template of this name and tag already, or WORKSPACE_MAX_TEMPLATES."),
        (413, "A Dockerfile or context past WORKSPACE_MAX_DOCKERFILE or WORKSPACE_MAX_TEMPLATE_CONTEXT."),
        (422, "A Dockerfile that does not parse (the line and why), a context that is not a base64 tar."),
        (429, "WORKSPACE_MAX_BUILDS builds are under way on this server: try again once one has ended."),
        502,
    ),
)
async def create_template(body: CreateTemplate, mgr: Manager, who: Owner) -> TemplateOut:
    """Start building a template's image from `dockerfile` (and `context`) and answer at once (201, `status`
    building); follow the build with GET /templates/{ref}/build-log. The Dockerfile is checked first: one that
    does not parse is a 422 before any build. `RUN` steps run without network, under WORKSPACE_TEMPLATE_BUILD_*
    limits (docs/architecture.md, "Templates", says what is isolated and how).

    Needs an API key; the template is its owner's, and only that owner's workspaces can be made from it.
    """
    return template_out(await in_thread(mgr.templates.create, who, body))


@router.get(
    "",
    summary="List your templates",
    response_model=TemplateList,
    responses=errors((404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES).")),
)
async def list_templates(mgr: Manager, who: Owner) -> TemplateList:
    """List your templates by name, every tag of each.

    Needs an API key: its owner's templates are listed.
    """
    return TemplateList(templates=await in_thread(lambda: _with_pools(mgr, mgr.templates.list(who))))


@router.get(
    "/{template}",
    summary="Get a template",
    response_model=TemplateOut,
    responses=errors((404, "No template of yours with this id or name[:tag]."), (422, "A reference too long.")),
)
async def get_template(template: TemplateRef, mgr: Manager, who: Owner) -> TemplateOut:
    """Return one of your templates, by id or name[:tag].

    Needs an API key: the template's owner's.
    """
    return (await in_thread(lambda: _with_pools(mgr, [mgr.templates.get(who, template)])))[0]


@router.get(
    "/{template}/build-log",
    summary="Follow a template's build log",
    response_class=StreamingResponse,
    responses=ndjson("BuildLogLine", "The log from `offset`, as it comes, then the build's end.")
    | errors((404, "No template of yours with this id or name[:tag]."), (422, "A negative offset.")),
)
async def build_log(
    template: TemplateRef,
    mgr: Manager,
    who: Owner,
    offset: Annotated[int, Query(ge=0, description="the first character wanted (a line's next_offset)")] = 0,
    follow: Annotated[bool, Query(description="wait for more until the build ends")] = True,
) -> StreamingResponse:
    """The build's log as NDJSON: `{"offset", "next_offset", "data"}` lines as the engine writes them (a
    `{"dropped": true, "resumed_at"}` line first when the log's start before `offset` is no longer kept: the
    last 64 KiB are), then `{"status", "error"}` once the build has ended (at once for a template built
    already). Without `follow`, what there is now, then the status.

    Needs an API key: the template's owner's.
    """
    first = await in_thread(mgr.templates.log_from, who, template, offset)  # a 404 before the answer starts

    async def lines() -> AsyncIterator[bytes]:
        piece, at = first, offset
        while True:
            if piece.resumed_at is not None:
                yield json_line(BuildLogLine(dropped=True, resumed_at=piece.resumed_at))
            if piece.text:
                at = piece.offset + len(piece.text)
                yield json_line(BuildLogLine(offset=piece.offset, next_offset=at, data=piece.text))
            if piece.status != "building" or not follow:
                yield json_line(BuildLogLine(status=piece.status, error=piece.error))  # type: ignore[arg-type]
                return
            await asyncio.sleep(FOLLOW_EVERY)
            piece = await in_thread(mgr.templates.log_from, who, template, at)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.delete(
    "/{template}",
    summary="Delete a template",
    status_code=204,
    responses=errors(
        (404, "No template of yours with this id or name[:tag]."),
        (409, "It is being built, or workspaces (not deleted) were made from it: the detail names each."),
        (422, "A reference too long."),
        502,
    ),
)
async def delete_template(template: TemplateRef, mgr: Manager, who: Owner) -> Response:
    """Delete a template and its image (204, no body), once no workspace of yours made from it is left
    (its warm pool, if any, goes with it).

    Needs an API key: the template's owner's.
    """
    await in_thread(mgr.templates.delete, who, template)
    return Response(status_code=204)
