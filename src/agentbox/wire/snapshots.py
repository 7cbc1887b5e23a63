"""The bodies of snapshots and forks (routes: api/snapshots.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agentbox.wire.workspaces import WorkspaceOut

#: The most workspaces one fork makes.
MAX_FORK = 100


def _not_an_id(value: str) -> str:
    if value.startswith("snap-"):
        raise ValueError("must not start with 'snap-', which snapshot ids do (a snapshot is found by either)")
    return value


SnapshotName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"), AfterValidator(_not_an_id)
]


class CreateSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SnapshotName | None = Field(
        default=None, description="a name of yours to find it by (unique among your snapshots); none: by id only"
    )


class SnapshotOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    workspace_id: str = Field(description="the workspace it was taken of (which may be gone since)")
    provider: str
    memory_kept: bool = Field(
        description="it holds the workspace's memory and processes too, which workspaces made from it go on with; "
        "false: its files only (a workspace with a network, or a runtime that cannot checkpoint)"
    )
    memory_note: str | None = Field(default=None, description="why its memory was not kept; null when it was")
    size: int = Field(description="bytes it takes on the host (blocks really allocated: copies are sparse)")
    image: str
    cpu: float
    memory: int
    disk: int
    created_at: datetime


class SnapshotList(BaseModel):
    snapshots: list[SnapshotOut] = Field(description="newest first")
    next_before: str | None = Field(description="pass as `before` for the next page; null: this is the last")


class ForkWorkspaces(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=MAX_FORK, description=f"how many workspaces to make, 1 to {MAX_FORK}")
    keep_snapshot: bool = Field(
        default=False,
        description="keep the fork's snapshot (listed, counted in WORKSPACE_MAX_SNAPSHOTS); by default it is deleted "
        "once the workspaces are made",
    )


class ForkMemberOut(BaseModel):
    id: str | None = Field(description="the new workspace's id; null when it could not be made")
    workspace: WorkspaceOut | None = None
    error: str | None = Field(default=None, description="why it could not be made")
    status_code: int | None = Field(default=None, description="the status its own create would have answered")


class ForkOut(BaseModel):
    source: str = Field(description="the workspace forked, which keeps running with its id and expiry")
    snapshot: SnapshotOut
    snapshot_kept: bool
    workspaces: list[ForkMemberOut] = Field(description="one per workspace asked for, in no particular order")
    made: int = Field(description="how many were made")
