"""The bodies of the server's own state (routes: server/system.py): its health, its providers and what
they can do, and its capacity.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Capacity(BaseModel):
    max_concurrent: int = Field(
        description="workspaces that may be starting or running at once (WORKSPACE_MAX_CONCURRENT)"
    )
    active: int = Field(description="workspaces starting or running now, every owner's (the warm pool's apart)")
    warm_pool_size: int = Field(description="booted workspaces kept ready to claim (WORKSPACE_WARM_POOL_SIZE)")
    warm_pool_ready: int = Field(description="of those, ready now")


class ProviderInfo(BaseModel):
    """What one provider of this server does (its `Capabilities`)."""

    runtime: str
    isolation: str
    network_policies: list[str] = Field(description="the policies it enforces; others are refused (400)")
    egress_by_name: bool = Field(
        default=False,
        description="it enforces policies by name (its egress proxy) and can change a workspace's network while "
        "it exists (PATCH /workspaces/{id}/network)",
    )
    stop_start: bool
    archives: bool
    sized_per_request: bool = Field(description="false: cpu, memory and disk come from its template")
    processes: bool = Field(description="background processes and terminals")
    watch: bool = Field(description="watching a directory for changes")
    pause_keeps_memory: list[str] = Field(
        description="the network policies of the workspaces whose pause keeps memory and processes "
        "(a checkpoint); others keep files only"
    )
    suspend: bool = Field(
        default=False, description="idle workspaces are suspended (frozen, no CPU) and woken by their next use"
    )
    volumes: bool = Field(default=False, description="named volumes (POST /volumes) can be mounted into its workspaces")
    snapshots: bool = Field(
        default=False,
        description="its workspaces can be snapshotted and forked (files; memory where pause_keeps_memory says)",
    )


class ProviderStatus(BaseModel):
    """One provider this server is configured with (WORKSPACE_PROVIDERS), usable or not."""

    name: str
    available: bool
    reason: str | None = Field(default=None, description="why it cannot be used here, and the fix; null when available")
    runtime: str | None = Field(default=None, description="what runs its workspaces (runsc, runc, e2b)")
    platform: str | None = Field(default=None, description="gVisor's platform (systrap, ptrace) for a gVisor provider")
    capabilities: ProviderInfo | None = None
    active: int = Field(description="its workspaces starting or running now, every owner's")


class ProviderList(BaseModel):
    providers: list[ProviderStatus]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    workspaces_enabled: bool
    runtime: str | None
    gvisor: bool
    gvisor_platform: str | None = Field(description="gVisor's platform (systrap, ptrace); null under runc")
    runsc_version: str | None = Field(description="the runsc build in use; null under runc or if unknown")
    runtime_reason: str
    providers: list[str]
    capabilities: dict[str, ProviderInfo] = Field(default_factory=dict, description="per provider offered")
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="providers this server cannot offer, with the reason and the fix"
    )
    e2b_api_url: str | None = Field(
        None, description="E2B_API_URL for code written for E2B's SDK; null when WORKSPACE_E2B_API=false"
    )
    e2b_sandbox_url: str | None = Field(None, description="E2B_SANDBOX_URL for E2B's SDK (envd); null when off")
    version: str
    replica: str | None = Field(
        None, description="the replica that answered (WORKSPACE_REPLICA_ID); null without an API key"
    )
    leader: str | None = Field(
        None,
        description="the replica that leads (runs the background work), as this one last saw; null: none, or no "
        "API key",
    )
    replicas: list[str] = Field(
        default_factory=list, description="the replicas alive, as this one last saw; empty without an API key"
    )
