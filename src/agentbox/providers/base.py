"""The provider interface: the deployment half of agentbox's split of deployment from runtime.

A provider is a place where workspaces run: it makes, starts, stops, pauses and removes sandboxes,
says their state, lists them (`inventory`), measures them and keeps their isolation in force. What
reaches inside a running one (commands, files, archives, watches, ports, background processes) is
its `Runtime` (sandbox/runtime.py), which `Provider.runtime(ref)` hands out: the Docker provider's
is the helper's channel over its socket, TCP or the Engine API's exec; E2B's is the SDK and the
same helper over E2B's commands. SWE-ReX keeps the same two halves (deployment, runtime).

Nothing outside `agentbox.providers` knows whether a command runs in a local gVisor
container, a plain Docker container or a managed cloud sandbox. A provider works on its own
handle (`ref`) and plain data; ownership, limits policy and persistence live in the manager.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from agentbox.egress.rules import Policy
from agentbox.errors import BadRequest
from agentbox.sandbox.runtime import Runtime
from agentbox.wire.network import NO_NETWORK, PolicyKind, kind_of, policy_of


@dataclass(frozen=True)
class VolumeMount:
    """A volume mounted into a workspace: the volume's id (the provider keeps its storage under it), where, how."""

    volume: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class WorkspaceSpec:
    """What a workspace must look like when it is ready."""

    id: str
    image: str
    cpu: float
    memory: int
    disk: int
    pids_limit: int
    #: What it may reach; the provider enforces it (see `Capabilities.network_policies`).
    network: PolicyKind = "egress"
    allow_cidrs: tuple[str, ...] | None = None  # for "allow": the list, resolved by `Provider.resolve_allow_list`
    #: For "allow" and "rules": the policy, enforced by name where `Capabilities.egress_by_name`.
    egress: Policy | None = None
    ttl_seconds: int | None = None  # for providers whose sandboxes end by themselves (E2B)
    #: Volumes made with `Provider.create_volume`, mounted into it (`Capabilities.volumes`).
    volumes: tuple[VolumeMount, ...] = ()
    #: The snapshot (its provider's `SnapshotTaken.ref`) it starts from: its files, and its memory when
    #: `from_memory` (the snapshot kept it, and this workspace can be restored with it).
    snapshot: str | None = None
    from_memory: bool = False

    @classmethod
    def of(cls, record: Any) -> WorkspaceSpec:
        """The spec of a stored workspace (anything with these attributes)."""
        policy = policy_of(record.network, getattr(record, "egress", None), record.allow)
        return cls(
            id=record.id,
            image=record.image,
            cpu=record.cpu,
            memory=record.memory,
            disk=record.disk,
            pids_limit=record.pids_limit,
            network="none" if record.network == NO_NETWORK else kind_of(policy),
            allow_cidrs=tuple(record.allow_cidrs) if record.allow_cidrs is not None else None,
            egress=policy if isinstance(policy, Policy) else None,
            ttl_seconds=int(record.ttl_days * 86400) if record.ttl_days else None,
            volumes=tuple(
                VolumeMount(m["volume"], m["path"], bool(m.get("read_only")))
                for m in getattr(record, "volumes", None) or ()
            ),
        )


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do beyond the contract every provider keeps (commands, files, inventory).

    The manager consults it before asking, so a request a provider cannot honour is a 400 that
    says so, never a weaker workspace.
    """

    runtime: str
    isolation: str
    archives: bool = True
    stop_start: bool = True
    #: False when a workspace's cpu, memory and disk come from the provider (E2B: its template).
    sized_per_request: bool = True
    #: The network policies it enforces (egress, none, allow, rules); any other is refused, never weakened.
    network_policies: frozenset[str] = frozenset({"egress", "none", "allow"})
    #: Egress policies are enforced by name, by a proxy (connection by connection, changeable while the
    #: workspace runs: `Provider.set_network`); False: an allow list is resolved once, at create.
    egress_by_name: bool = False
    #: How to get the policies it lacks, for the refusal ("" when there is no way).
    network_hint: str = ""
    #: Background processes (`Runtime.processes`): started, found again by PID, output by offset.
    processes: bool = False
    #: File system events under a directory (`Runtime.watch`).
    watch: bool = False
    #: Connections to ports on a workspace's loopback (`Runtime.connect`), for previews.
    ports: bool = False
    #: The network policies of the workspaces whose pause keeps memory and processes (`Provider.pause`).
    pause_keeps_memory: frozenset[str] = frozenset()
    #: A running workspace can be suspended where it is, using no CPU, and woken (`Provider.suspend`).
    suspend: bool = False
    #: Named volumes: made (`Provider.create_volume`), mounted into workspaces at create (`WorkspaceSpec.volumes`),
    #: kept when they go, removed (`Provider.destroy_volume`).
    volumes: bool = False
    #: A workspace's files (and memory, as `pause_keeps_memory` says) can be snapshotted, and workspaces made
    #: from the snapshot (`Provider.snapshot`, `WorkspaceSpec.snapshot`).
    snapshots: bool = False
    #: Images can be built from a Dockerfile for templates (`Provider.build_image`).
    templates: bool = False


@dataclass(frozen=True)
class ImageBuild:
    """A template's image to build: tagged `ref`, from `dockerfile`, with `context` (a tar, gzip'd or not)."""

    ref: str
    dockerfile: str
    context: bytes | None = None
    labels: dict[str, str] = field(default_factory=dict)
    memory: int = 2 << 30
    cpu: float = 1.0
    timeout: float = 600.0
    disk: int = 8 << 30  # what its steps may write in all


@dataclass(frozen=True)
class Resources:
    """What a workspace got; None where the provider does not say."""

    cpu: float | None = None
    memory: int | None = None
    disk: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a running workspace uses now: CPU time since it started, memory held (its working set) and bytes
    written to its disk (None: its provider cannot say)."""

    cpu_seconds: float
    memory_bytes: int
    disk_bytes: int | None = None


@dataclass(frozen=True)
class SnapshotTaken:
    """A snapshot a provider made: its handle, whether it holds memory and processes, the bytes it takes."""

    ref: str
    memory_kept: bool
    size: int
    #: Why memory was not kept, for the answer ("" when it was, or was not asked for).
    memory_note: str = ""


ProviderState = Literal["running", "stopped", "missing"]


class Provider(abc.ABC):
    """A place where workspaces run. All methods block; callers run them off the event loop."""

    name: str

    @property
    def scope(self) -> Hashable:
        """What it holds: providers with the same scope (gvisor and docker on one engine) list the same
        sandboxes and keep the same isolation, so background work asks only one of them."""
        return id(self)

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def create(self, spec: WorkspaceSpec) -> str:
        """Create and start a workspace; return once a command has run in it. Leaves nothing on failure."""

    def resources(self, ref: str) -> Resources | None:
        """What the workspace really got, when the provider decides it (None: what was asked)."""
        return None

    def usage(self, ref: str) -> Usage | None:
        """Its CPU time and memory now; None when it is not running or this provider cannot measure them.

        Raises ProviderError when the engine cannot be asked."""
        return None

    def has_image(self, image: str) -> bool:
        """Whether workspaces can be made from `image`; a provider that cannot tell says True (and
        `create` refuses what it cannot make). Raises ProviderUnavailable."""
        return True

    def keep(self, ref: str, until: datetime | None) -> None:
        """Make sure the workspace lives until `until` (None: until it is deleted). Called every round.

        For providers whose sandboxes end by themselves; a container lives until removed.
        """
        return None

    def resolve_allow_list(self, entries: list[str]) -> list[str]:
        """The CIDRs an allow list stands for, checked against what this provider never lets a workspace reach.

        Called before admission (a name lookup may take seconds). Raises BadRequest for an entry that
        cannot be resolved or may never be reached, or when the provider cannot enforce allow lists.
        """
        raise BadRequest(
            f'the {self.name} provider cannot enforce network allow lists: ask for "egress" or "none", or use '
            "the gvisor or docker provider on a server with WORKSPACE_NETWORK_NAME set"
        )

    def check_policy(self, policy: Policy) -> None:
        """Refuse (BadRequest, 400) a policy that names what this provider never lets a workspace reach (a
        private or metadata range, say), before anything is made. For providers with `egress_by_name`."""
        return None

    def set_network(self, ref: str, policy: Policy | Literal["egress"]) -> None:
        """Give the running workspace `ref` this policy for its new connections, in force on return; also how a
        restarted server hands a running workspace's policy back to its provider, and how a started one gets it.

        Raises BadRequest when this provider cannot change a workspace's network (no `egress_by_name`),
        WorkspaceGone when it is gone, ProviderError when the change could not be made."""
        raise BadRequest(f"the {self.name} provider cannot change a workspace's network while it runs")

    def enforce(self) -> None:
        """Re-assert isolation that something outside may have undone (Docker: a firewall flush).

        Called every few seconds by the background loop; raises ProviderError when it cannot.
        """
        return None

    @abc.abstractmethod
    def start(self, ref: str) -> None: ...

    @abc.abstractmethod
    def stop(self, ref: str) -> None: ...

    def pause(self, ref: str) -> bool:
        """Stop the workspace so that `start` resumes it; True when its memory and processes were kept too."""
        self.stop(ref)
        return False

    def discard_memory(self, ref: str) -> None:
        """Forget what a pause kept in memory, so that the next `start` boots afresh (files kept)."""
        return None  # `pause` above keeps none

    def snapshot(self, ref: str, snapshot_id: str, memory: bool) -> SnapshotTaken:
        """Copy the workspace's files (and with `memory`, its memory and processes where it can), leaving it
        running as it was (a short pause at most). Leaves nothing behind on failure.

        Raises BadRequest when this provider cannot snapshot (`capabilities().snapshots`), ProviderError."""
        raise BadRequest(
            f"the {self.name} provider cannot snapshot workspaces (GET /api/v1/providers: capabilities.snapshots); "
            "use a workspace of the gvisor or docker provider"
        )

    def delete_snapshot(self, snapshot_ref: str) -> None:
        """Remove what a snapshot holds; one already gone is not an error."""
        return None

    def suspend(self, ref: str) -> None:
        """Stop the running workspace where it is, using no CPU, its memory and processes kept, until
        `wake` (`capabilities().suspend`). Anything that reaches inside it waits while it is suspended,
        so its caller wakes it first; `stop`, `pause` and `destroy` wake it themselves.

        Raises BadRequest when the provider cannot suspend, ProviderError when it fails (it is left running)."""
        raise BadRequest(f"the {self.name} provider cannot suspend a workspace")

    def wake(self, ref: str) -> None:
        """Let a suspended workspace run again, as it was; nothing for one that is not suspended."""
        return None

    @abc.abstractmethod
    def destroy(self, ref: str) -> None:
        """Remove the workspace and its storage. Removing one that is already gone is not an error.

        Raises ProviderUnavailable when the provider cannot be reached, or does not answer in time: what
        is left of the workspace then goes in the background where the provider can (the Docker
        provider), and at the next reconciliation once no live record names it."""

    @abc.abstractmethod
    def state(self, ref: str) -> ProviderState: ...

    @abc.abstractmethod
    def inventory(self) -> dict[str, tuple[str, ProviderState]]:
        """Every workspace this provider holds, whether agentbox knows of it or not: id -> (ref, state).

        Used to reconcile after a crash: handles with no record are destroyed.
        """

    @abc.abstractmethod
    def runtime(self, ref: str) -> Runtime:
        """What reaches inside the workspace `ref`: commands, files, archives, watches, ports, processes.

        Reaches nothing itself (it is made for every request): a workspace that is gone fails the
        runtime's first call (WorkspaceGone), not this one. What the runtime can do beyond
        commands and files, `capabilities()` says (`archives`, `processes`, `watch`, `ports`).
        """

    def create_volume(self, volume_id: str, size: int) -> None:
        """Make a volume's storage of `size` bytes (writes past it fail with ENOSPC), ready to be mounted.
        Leaves nothing on failure. Raises BadRequest when this provider has no volumes, ProviderError."""
        raise BadRequest(f"the {self.name} provider cannot keep volumes; use the gvisor or docker provider")

    def destroy_volume(self, volume_id: str) -> None:
        """Remove a volume's storage and what it holds; one already gone is not an error. Raises ProviderError."""
        return None

    def volume_used(self, volume_id: str) -> int | None:
        """Bytes written on the volume, or None when the provider cannot say."""
        return None

    def volume_ids(self) -> set[str]:
        """Every volume whose storage this provider holds (to find what no record names)."""
        return set()

    def snapshot_refs(self) -> set[str]:
        """Every snapshot whose storage this provider holds (to find what no record names)."""
        return set()

    def check_bases(self, images: list[str]) -> None:
        """Every image a Dockerfile's `FROM` names is here (builds never pull). BadRequest naming one that is not."""
        raise BadRequest(f"the {self.name} provider cannot build templates; use the gvisor or docker provider")

    def check_dockerfile(self, dockerfile: str) -> None:
        """Unprocessable (422) naming what of a (parsed) Dockerfile this provider's builder does not do."""
        return None

    def build_image(self, build: ImageBuild, on_log: Callable[[str], None]) -> str:
        """Build and tag a template's image, each line of the build's log to `on_log` as it comes; the image's id.
        Leaves nothing of a failed build. Raises BadRequest when this provider cannot build, ProviderError (a
        failed step: its 422 subclass, with the engine's message)."""
        raise BadRequest(f"the {self.name} provider cannot build templates; use the gvisor or docker provider")

    def remove_image(self, ref: str) -> None:
        """Remove a template's image (one already gone is not an error). Raises ProviderError."""
        return None

    def close(self) -> None:
        """Let go of what the provider holds, at the server's end: work it was doing in the background
        stops, leaving nothing that outlives the server and only it would clean up."""
        return None

    def reserved_ports(self, ref: str) -> frozenset[int]:
        """Ports the provider's own machinery listens on in the workspace (not the workload's: no preview).

        Here, not on the runtime: they are the deployment's choice (the Docker provider's TCP channel
        is a listener it asked the workspace's init to open, on the port of its settings), which a
        runtime over whatever transport it was given cannot know."""
        return frozenset()


def distinct(providers: Iterable[Provider]) -> list[Provider]:
    """One provider per scope."""
    return list({provider.scope: provider for provider in providers}.values())
