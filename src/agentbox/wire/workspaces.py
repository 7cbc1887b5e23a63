"""The bodies of workspaces (routes: api/workspaces.py): one to make, a longer life, a workspace as
answered (rows become these in the routes: api/workspaces.py's `workspace_out`), and its CPU and memory.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentbox.wire.common import Disk, Env, IdleTimeout, LabelKey, LabelValue, Memory
from agentbox.wire.domain import NewWorkspace, ProviderName, Status, VolumeRequest
from agentbox.wire.github import CheckoutOut, RepoSpec
from agentbox.wire.network import NetworkPolicy
from agentbox.wire.sizes import format_size
from agentbox.wire.volumes import VolumeMountOut, VolumeMounts


class CreateWorkspace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: ProviderName | None = None
    image: str | None = Field(None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    cpu: float | None = Field(None, gt=0, le=256)
    memory: Memory | None = None
    disk: Disk | None = None
    ephemeral: bool = True
    ttl_days: float | None = Field(None, gt=0, le=3650)
    env: Env = Field(default_factory=dict)
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=64)] = Field(default_factory=dict)
    network: NetworkPolicy | None = Field(
        None,
        description='"egress" (the public internet), "none" (loopback only), or an egress policy: {"allow": [...], '
        '"deny": [...], "default": "deny", "precedence": "deny", "headers": [{"host", "headers"}]} whose entries are '
        'names ("pypi.org"), wildcards ("*.github.com"), IPv4 CIDRs, each with ports ("api.example.com:443"); '
        "default: the server's WORKSPACE_NETWORK_POLICY",
    )
    repo: RepoSpec | None = Field(default=None, description="a repository to check out into /workspace/<name>")
    idle_timeout: IdleTimeout | None = Field(
        None,
        description="seconds unused (no call into it, and not busy on its own) after which it is suspended: frozen, "
        "using no CPU, until its next use wakes it; 0: never; default: the server's WORKSPACE_IDLE_TIMEOUT",
    )

    volumes: VolumeMounts = Field(
        default_factory=list,
        description="your volumes (POST /volumes) to mount into it, each at an absolute path, read-only or not; "
        "gvisor and docker workspaces only",
    )

    snapshot: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="one of your snapshots, by id (snap-...) or name: the workspace starts with its files (and its "
        'memory and processes, when it kept them and the workspace has "network": "none"); its image, cpu, memory, '
        "disk and network are the defaults of what is left out (a disk at least as large)",
    )

    template: str | None = Field(
        None,
        min_length=1,
        max_length=129,
        description="one of your templates (POST /templates), by id (tpl-...) or name[:tag] (tag: latest): the "
        "workspace runs its image, its start command is started, and the create answers once its ready command "
        "exits 0; not with `image` or `snapshot`",
    )

    def to_domain(self) -> NewWorkspace:
        fields = {name: getattr(self, name) for name in type(self).model_fields if name not in ("repo", "volumes")}
        volumes = tuple(VolumeRequest(v.name, v.path, v.read_only) for v in self.volumes)
        return NewWorkspace(**fields, repo=self.repo.to_checkout() if self.repo else None, volumes=volumes)


class ExtendWorkspace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_days: float | None = Field(None, gt=0, le=3650, description="from now; default: the workspace's own TTL")


class SetNetwork(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: NetworkPolicy = Field(
        description='"egress", or an egress policy (as at create); a change to or from "none" needs a new workspace'
    )


class WorkspaceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str
    provider: str
    runtime: str
    status: Status
    image: str
    cpu: float
    memory: str
    disk: str
    ephemeral: bool
    ttl_days: float | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(
        default=None,
        description="its last command, file or process call (to the minute); each use of an "
        "ephemeral workspace moves expires_at to its TTL from then",
    )
    labels: dict[str, str]
    network: NetworkPolicy
    repo: CheckoutOut | None = Field(default=None, description="the repository checked out at create, and where")
    memory_kept: bool | None = Field(
        default=None, description="whether its last pause kept its memory and processes (null: never paused)"
    )
    volumes: list[VolumeMountOut] = Field(default_factory=list, description="the volumes mounted in it")
    idle_timeout: float | None = Field(
        default=None, description="seconds unused after which it is suspended (0: never; null: the server's default)"
    )
    suspended: bool = Field(
        default=False,
        description="its sandbox is frozen while it waits (it stays running): any use wakes it, in milliseconds",
    )
    suspended_at: datetime | None = None
    error: str | None = None
    usage: UsageSampleOut | None = Field(
        default=None,
        description="CPU and memory at its last measurement (every WORKSPACE_USAGE_INTERVAL seconds); "
        "null: not running, not measured yet, or its provider cannot say",
    )

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _readable_size(cls, value: int | str) -> str:
        return format_size(value) if isinstance(value, int) else value

    @field_validator("volumes", mode="before")
    @classmethod
    def _no_volumes(cls, value: object) -> object:
        return [] if value is None else value  # the row's NULL


class UsageSampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    cpu: float | None = Field(
        description="cores busy on average since the sample before (0.5: half a core); null for the first of a run"
    )
    memory: int = Field(description="bytes in use: its working set, without file cache the kernel can take back")


class UsageOut(BaseModel):
    interval: float = Field(description="seconds between two samples (WORKSPACE_USAGE_INTERVAL)")
    samples: list[UsageSampleOut] = Field(description="the last hour's, oldest first")


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceOut]
