"""The bodies of templates (routes: api/templates.py): a template to build, a template as answered, and the
lines of its build's log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: A template's tag when none is given.
DEFAULT_TAG = "latest"


def _not_an_id(value: str) -> str:
    if value.startswith("tpl-"):
        raise ValueError("must not start with 'tpl-', which template ids do (a template is found by either)")
    return value


TemplateName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"), AfterValidator(_not_an_id)
]
TemplateTag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")]


class CreateTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TemplateName = Field(description="your name for it; with `tag`, unique among your templates")
    tag: TemplateTag = Field(DEFAULT_TAG, description="its version")
    dockerfile: str = Field(
        min_length=1,
        description="the Dockerfile's text; FROM an image on this server (builds never pull), RUN steps without "
        "network (WORKSPACE_MAX_DOCKERFILE bytes at most)",
    )
    context: str | None = Field(
        None,
        description="the build's context, a tar archive (gzip'd or not) in base64, for COPY and ADD "
        "(WORKSPACE_MAX_TEMPLATE_CONTEXT bytes at most, decoded)",
    )
    start_cmd: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="a shell command each workspace made from it starts in the background (a server, a daemon)",
    )
    ready_cmd: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="a shell command run until it exits 0 (every half second): a workspace is handed out only then",
    )
    ready_timeout: float = Field(
        60.0, gt=0, le=600, description="seconds the ready command has to pass before a create fails (and is undone)"
    )
    pool_size: int = Field(
        0,
        ge=0,
        le=64,
        description="workspaces of it kept booted and ready for creates (WORKSPACE_TEMPLATE_POOL_SIZE at most)",
    )


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    tag: str
    image: str = Field(description="the engine's name of its image (workspaces made from it show it as theirs)")
    status: Literal["building", "ready", "failed"]
    error: str | None = Field(description="why the build failed")
    start_cmd: str | None
    ready_cmd: str | None
    ready_timeout: float
    pool_size: int
    pool_ready: int = Field(0, description="workspaces of its pool booted, started and ready, waiting for a create")
    log_size: int = Field(description="characters its build's log has had (GET .../build-log streams it)")
    created_at: datetime
    built_at: datetime | None


class TemplateList(BaseModel):
    templates: list[TemplateOut]


class BuildLogLine(BaseModel):
    """A piece of the build's log (`data`, from character `offset`), a note that the log's start before
    `resumed_at` is no longer kept (`dropped`), or the build's end (`status`, `error`)."""

    offset: int | None = None
    next_offset: int | None = None
    data: str | None = None
    dropped: bool | None = None
    resumed_at: int | None = None
    status: Literal["building", "ready", "failed"] | None = None
    error: str | None = None
