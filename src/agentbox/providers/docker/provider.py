"""Workspaces as containers on a Docker engine, under gVisor's runsc or the standard runc.

This module is the deployment (containers, disks, the fenced network, checkpoints). Its runtime
(`runtime(ref)`) is the helper's channel (sandbox/channel.py): every command and file operation
runs *inside* the container through the static `agentbox-exec` helper, reached over its TCP
listener, its Unix control socket or the Engine API's exec, whichever the workspace has. Going
through the sandbox rather than the engine's archive API matters under gVisor: runsc caches the
root filesystem, so a file changed from the host side (`docker cp`) may never be seen by the
workload, and a symlink can only ever resolve within the container it lives in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal, TypeVar

import docker
import docker.errors
from docker.types import Mount

from agentbox.egress.rules import Policy
from agentbox.errors import (
    AgentboxError,
    BadRequest,
    Conflict,
    ProviderError,
    ProviderUnavailable,
    Unprocessable,
    WorkspaceGone,
)
from agentbox.providers.base import (
    Capabilities,
    ImageBuild,
    Provider,
    ProviderState,
    SnapshotTaken,
    Usage,
    VolumeMount,
    WorkspaceSpec,
)
from agentbox.providers.docker import gvisor_build
from agentbox.providers.docker import images as template_images
from agentbox.providers.docker.boot import probe_booted, start_and_await_ready
from agentbox.providers.docker.channel import (
    ROOT_START_CAPABILITIES,
    SECRET_IN_WORKSPACE,
    SOCKET_PATIENCE,
    TcpChannel,
    WaysIn,
)
from agentbox.providers.docker.checkpoints import LET_GO_OF_SOCKET, LISTEN_AGAIN, Checkpoints
from agentbox.providers.docker.disks import HOME, PROCS, TMP, VOLUME_DATA, WORKSPACE, Disks
from agentbox.providers.docker.egress_gateway import EgressGateway
from agentbox.providers.docker.engine import EngineTransport, engine_errors
from agentbox.providers.docker.freezer import CgroupFreezer, cgroup_freezing, container_freezer
from agentbox.providers.docker.labels import INSTANCE_LABEL, WORKSPACE_LABEL
from agentbox.providers.docker.network import WorkspaceNetwork, mac_address
from agentbox.providers.docker.oci_runtime import STANDARD_RUNTIME
from agentbox.providers.docker.removals import BackgroundRemovals
from agentbox.providers.docker.snapshots import CHECKPOINT as SNAPSHOT_CHECKPOINT
from agentbox.providers.docker.snapshots import SnapshotFiles
from agentbox.providers.docker.usage import CGROUP_ROOT, cgroup_usage, stats_usage
from agentbox.sandbox import (
    CONTROL_IN_WORKSPACE,
    CONTROL_SOCKET,
    HELPER_IN_WORKSPACE,
    PROCS_IN_WORKSPACE,
    helper_bytes,
    helper_digest,
)
from agentbox.sandbox.channel import HelperChannel, Transport
from agentbox.sandbox.runtime import ExecRequest
from agentbox.wire.network import NO_NETWORK, POLICY_KINDS

log = logging.getLogger("agentbox.providers.docker")

CONTAINER_PREFIX = "agentbox-"
HELPER = HELPER_IN_WORKSPACE
#: The home of images that name none (the default image's user, `agent`, lives there).
DEFAULT_HOME = "/home/agent"
# Room in a gVisor sandbox's host cgroup for gVisor itself (sentry and gofer) on top of the
# workload's limit, plus an eighth of the limit for what the workload allocates between two
# checks of the in-sandbox OOM killer.
GVISOR_MEMORY_HEADROOM = 128 << 20
GVISOR_HOST_PIDS_PER_TASK = 40
STOP_TIMEOUT = 10  # seconds between SIGTERM and SIGKILL when a workspace stops
# A workspace comes back when it dies or the engine restarts, unless stopped. One whose pause keeps its
# memory comes back only from a failure: a checkpoint ends the container with status 0 and is no stop to
# the engine, which would boot it afresh at once under unless-stopped (init ends with 128 + the signal
# when the engine stops it, so an engine restart still brings it back). `docker update` cannot change a
# policy later: runsc has no update.
RESTARTING = {"Name": "unless-stopped"}
RESTARTING_UNLESS_CHECKPOINTED = {"Name": "on-failure"}
# How long a delete waits for another one of the same workspace, under way, to finish.
REMOVAL_PATIENCE = 60.0
#: The name of the checkpoint a snapshot keeps of a workspace's memory, in its directory's SNAPSHOT_CHECKPOINT.
SNAPSHOT_MEMORY = "memory"
_Found = TypeVar("_Found")


class DockerProvider(Provider):
    """`gvisor` (runsc, or runc after the spec's fallback) and `docker` (runc by choice).

    A workspace is the container `agentbox-<id>` (that name is the provider's handle) and
    the disk `<id>`; the root filesystem is read-only and everything writable lives on the disk.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        name: str,
        oci_runtime: str,
        user: str,
        isolation: str,
        disks: Disks,
        helper: Path,
        instance: str,
        network: WorkspaceNetwork | None = None,
        control_root: Path | None = None,
        checkpoint_runtime: str | None = None,
        tcp_channel: TcpChannel | None = None,
        egress: EgressGateway | None = None,
        volumes: Disks | None = None,
        build_runtime: bool = False,
    ) -> None:
        """`network`: the fenced workspace network (WORKSPACE_NETWORK_NAME); None puts workspaces that may
        reach the internet on Docker's default bridge, with no firewall, and refuses allow lists.
        `control_root`: where each workspace's control directory is made (its helper's socket); None: every
        command and file operation goes through the Engine API's exec.
        `checkpoint_runtime`: the runtime of workspaces without network, which the engine can checkpoint,
        so that a pause keeps their memory; None: pauses keep files only.
        `tcp_channel`: reach the helper of each workspace with a network over TCP, at its address
        (WORKSPACE_HELPER_CHANNEL=tcp, channel.py); the control socket, then the Engine API's exec,
        remain for workspaces without network and for those made without the listener.
        `egress`: the proxy and redirect of `network` (egress_gateway.py), which enforce egress policies by name;
        None: only plain allow lists, resolved at create and pinned by the firewall.
        `volumes`: where named volumes live (each a disk like a workspace's, of its own size, loop-mounted from its
        create to its delete and bind-mounted into the workspaces that use it); None: no volumes."""
        self.client = client
        self.network = network
        self.control_root = control_root
        self.name = name
        self.oci_runtime = oci_runtime  # runsc, runc...: the engine's name for it
        self.user = user
        self.disks = disks
        self.helper = helper
        self.instance = instance
        self.checkpoint_runtime = checkpoint_runtime
        # Template builds step by step under gVisor (providers/docker/gvisor_build.py) when asked and the engine
        # has the build runtime; else the engine's builder, whose RUN steps run under runc.
        self.build_runtime = build_runtime
        self.tcp_channel = tcp_channel
        self.egress = egress if network is not None else None
        self.volumes = volumes
        self.checkpoints = Checkpoints(client)
        self.snapshots = SnapshotFiles(disks.root.parent / "snapshots", disks)
        self.ways_in = WaysIn(client, user, control_root, tcp_channel)
        self._isolation = isolation
        self._background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agentbox-disk")
        #: ref -> (container id, cgroup parent), fixed for the container's life: its cgroup is read (usage) and
        #: thawed (wake) without asking the engine (`_cgroup`).
        self._cgroups: dict[str, tuple[str, str]] = {}
        #: Removals the engine did not answer in time (destroy), finished in the background until close.
        self.removals = BackgroundRemovals(self._remove_containers, self._release)

    @property
    def scope(self) -> Hashable:
        # Every provider of this deployment on this engine sees the same containers and the same network.
        return ("docker", self.instance)

    def capabilities(self) -> Capabilities:
        offers = Capabilities(
            runtime=self.oci_runtime,
            isolation=self._isolation,
            processes=True,
            watch=True,
            ports=True,
            pause_keeps_memory=frozenset({"none"} if self.checkpoint_runtime else ()),
            suspend=cgroup_freezing(),
            snapshots=True,
            volumes=self.volumes is not None,
            templates=True,
        )
        if self.network is not None and self.egress is not None:
            return dataclasses.replace(offers, network_policies=POLICY_KINDS, egress_by_name=True)
        if self.network is not None:
            return dataclasses.replace(
                offers,
                network_policies=POLICY_KINDS - {"rules"},
                network_hint="policies beyond a plain allow list (deny, ports, wildcards, headers) need the egress "
                "proxy: run the server with WORKSPACE_EGRESS_PROXY=true",
            )
        return dataclasses.replace(
            offers,
            network_policies=POLICY_KINDS - {"allow", "rules"},
            network_hint="allow lists need the workspace network and its firewall: run the server with "
            "WORKSPACE_NETWORK_NAME set",
        )

    def resolve_allow_list(self, entries: list[str]) -> list[str]:
        if self.network is None:
            return super().resolve_allow_list(entries)
        if self.egress is not None:
            return []  # enforced by name, connection by connection: no address is pinned
        return self.network.resolve(entries)

    def check_policy(self, policy: Policy) -> None:
        if self.network is None:
            return
        for index, entry in enumerate(policy.allow):
            if entry.network is None:
                continue
            for bad in self.network.firewall.blocked:
                if entry.network.subnet_of(bad):
                    raise BadRequest(
                        f"network.allow[{index}]: {entry.describe()!r} lies in {bad}, which workspaces may never reach "
                        "(private, link-local, metadata or this host's own networks); allow public addresses only"
                    )

    def set_network(self, ref: str, policy: Policy | Literal["egress"]) -> None:
        if self.egress is None or self.network is None:
            return super().set_network(ref, policy)
        workspace_id = _workspace_id(ref)
        mac = mac_address(workspace_id)
        if policy == "egress":
            self.egress.detach(workspace_id)
            self.network.firewall.grant(mac, None)
            return
        assert isinstance(policy, Policy)
        self.network.firewall.grant(mac, [])  # nothing directly: everything through the proxy
        if self._inspect(ref)["State"].get("Running"):
            self.egress.attach(workspace_id, self._address(ref), policy)
        else:  # stopped: `start` attaches it once the container has its address
            self.egress.expect(workspace_id, policy)

    def _address(self, ref: str) -> IPv4Address:
        """The running workspace's address on the workspace network. Raises WorkspaceGone, ProviderError."""
        assert self.network is not None
        networks = self._inspect(ref)["NetworkSettings"].get("Networks") or {}
        address = (networks.get(self.network.name) or {}).get("IPAddress")
        if not address:
            raise ProviderError(f"workspace {_workspace_id(ref)} has no address on {self.network.name}: is it running?")
        return IPv4Address(address)

    def enforce(self) -> None:
        if self.network is not None:
            self.network.restore()
        if self.egress is not None:
            self.egress.restore()  # after the firewall's: its repair may have put its INPUT jump ahead of ours

    # Lifecycle

    def has_image(self, image: str) -> bool:
        with engine_errors("looking up the image"):
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                return False
        return True

    def _home(self, image: str) -> str:
        """The home the image names (its HOME), which the workspace's disk then holds."""
        with engine_errors("inspecting the image"):
            try:
                env = self.client.images.get(image).attrs["Config"].get("Env") or []
            except docker.errors.ImageNotFound:
                return DEFAULT_HOME  # a missing image is reported by the create call itself
        homes = [e.partition("=")[2] for e in env if e.startswith("HOME=")]
        return homes[-1] if homes and homes[-1].startswith("/") and homes[-1] != "/" else DEFAULT_HOME

    def create(self, spec: WorkspaceSpec) -> str:
        ref = CONTAINER_PREFIX + spec.id
        disk = self.disks.mountpoint(spec.id)
        binds = [(self.helper, HELPER, True), (disk / WORKSPACE, "/workspace", False)]
        home = self._home(spec.image)
        binds += [(disk / TMP, "/tmp", False), (disk / HOME, home, False)]
        binds.append((disk / PROCS, PROCS_IN_WORKSPACE, False))
        binds += self._volume_binds(spec.volumes, home)
        init = [HELPER, "init"]
        host_memory, host_pids = spec.memory, spec.pids_limit
        if self.oci_runtime != STANDARD_RUNTIME:
            # gVisor's own kernel shares the workload's cgroups, and hitting a host limit kills the
            # whole sandbox, not the process. So the limits are enforced inside the sandbox, with
            # headroom on the host: init kills the biggest process past the memory limit (see
            # cmd_init in init.c), and every command runs with RLIMIT_NPROC, which gVisor
            # counts per sandbox (each task costs ~15 host threads under ptrace, measured). Not
            # Docker's --ulimit: runsc applies that to its own host process too.
            host_memory = spec.memory + GVISOR_MEMORY_HEADROOM + spec.memory // 8
            init += ["-M", str(spec.memory), "-P", str(spec.pids_limit)]
            host_pids = spec.pids_limit * GVISOR_HOST_PIDS_PER_TASK + 256
        if self.control_root is not None:
            binds.append((self.ways_in.control_dir(spec.id), CONTROL_IN_WORKSPACE, False))
            init += ["-S", f"{CONTROL_IN_WORKSPACE}/{CONTROL_SOCKET}"]
        user, capabilities = self.user, []
        if self.tcp_channel is not None and spec.network != "none":
            # The key is root's alone in the sandbox: init starts as root, reads it and becomes the workspace's
            # user before anything else runs (init.c, cmd_init). A workspace without network has no
            # address to listen on: it keeps the Unix socket, and starts as the workspace's user.
            binds.append((self.tcp_channel.install_key(spec.id), SECRET_IN_WORKSPACE, True))
            init += self.tcp_channel.init_arguments(spec.id, self.user)
            user, capabilities = "0:0", ROOT_START_CAPABILITIES
        if self.control_root is not None or self.tcp_channel is not None:
            init += ["-I", spec.id]
        environment = {"HOME": home}
        by_name = spec.egress is not None and self.egress is not None and spec.network != "none"
        if self.egress is not None and spec.network != "none":
            # Every workspace with a network trusts the proxy's CA from its first command, "egress" ones too: a
            # policy with a header rule may come later (PATCH), and a bundle cannot be changed under a running
            # workspace. An open one keeps an image without a bundle of its own as it is (`trust`).
            mounts, variables = self.egress.trust(spec.image, own_bundle_only=not by_name)
            binds += mounts
            environment |= variables
        labels = {WORKSPACE_LABEL: spec.id, INSTANCE_LABEL: self.instance}
        runtime = self.checkpoint_runtime if spec.network == "none" and self.checkpoint_runtime else self.oci_runtime
        options: dict[str, Any] = {
            "name": ref,
            "hostname": spec.id.replace("_", "-"),
            "labels": labels,
            "runtime": runtime,
            "user": user,
            "working_dir": "/workspace",
            "environment": environment,
            "mounts": [Mount(target, str(source), type="bind", read_only=ro) for source, target, ro in binds],
            "read_only": True,
            "nano_cpus": int(spec.cpu * 1e9),
            "mem_limit": host_memory,
            "memswap_limit": host_memory,  # no swap: the memory limit is the limit
            "pids_limit": host_pids,
            # A sandbox that dies (gVisor itself out of host threads or memory: the host limits are
            # the last line; its exit status is then not always an error) comes back by itself, as
            # after an engine restart; its files live on the disk and survive. `stop` still stops.
            "restart_policy": RESTARTING_UNLESS_CHECKPOINTED if runtime == self.checkpoint_runtime else RESTARTING,
            "cap_drop": ["ALL"],
            "cap_add": capabilities,
            "security_opt": ["no-new-privileges"],
        }
        if spec.network == "none":
            options["network"] = NO_NETWORK
        else:
            options["mac_address"] = mac_address(spec.id)  # how the firewall knows this workspace
        # Only now the disk, once nothing before the cleanup below can fail (a failure above left it mounted).
        self.disks.reserve(spec.id)
        # mkfs + mount (~45 ms) overlap the engine's create call.
        if spec.snapshot is None:
            formatting = self._background.submit(self.disks.format, spec.id, spec.disk)
        else:  # its files: a copy of the snapshot's disk
            formatting = self._background.submit(self.snapshots.lay_disk, spec.snapshot, spec.id, spec.disk)
        try:
            if spec.network != "none" and self.network is not None:
                labels.update(self.network.join(spec.id, [] if by_name else spec.allow_cidrs))
                options["network"] = self.network.name
            elif spec.network == "allow":
                raise BadRequest(self.capabilities().network_hint)
            with engine_errors("creating the container"):
                try:
                    self.client.containers.create(spec.image, init, **options)
                except docker.errors.ImageNotFound:
                    raise BadRequest(
                        f"image {spec.image!r} is not on the Docker engine: build it (`make image` builds the "
                        "default), load it, or leave `image` out to use the default"
                    ) from None
                except docker.errors.APIError as exc:
                    if exc.status_code == 400:
                        raise BadRequest(f"the Docker engine refused the workspace: {exc.explanation}") from None
                    raise
            formatting.result()
            if spec.from_memory:
                self._start_from_memory(ref, spec)
            else:
                start_and_await_ready(self.client, ref)
            if by_name:
                assert self.egress is not None and spec.egress is not None
                self.egress.attach(spec.id, self._address(ref), spec.egress)
        except BaseException:
            with contextlib.suppress(Exception):
                formatting.result()  # never remove a disk while it is still being made
            with contextlib.suppress(ProviderError):  # engine down: reconciliation removes the rest later
                self.destroy(ref)
            raise
        return ref

    # Volumes: disks of their own under `volumes`, mounted on the host for their whole life (a loop device
    # each), so that a workspace's create or start only binds them; remounted after a host reboot.

    def _volume_binds(self, mounts: tuple[VolumeMount, ...], home: str) -> list[tuple[Path, str, bool]]:
        """The bind mounts of a workspace's volumes, each mounted on the host. BadRequest for a volume this
        provider does not hold, or a path that is the workspace's own."""
        if not mounts:
            return []
        if self.volumes is None:
            raise BadRequest(f"the {self.name} provider on this server keeps no volumes")
        binds = []
        for mount in mounts:
            if mount.path == home:
                raise BadRequest(f"volume at {mount.path!r}: that is the image's home directory; mount it elsewhere")
            binds.append((self._volume_data(mount.volume), mount.path, mount.read_only))
        return binds

    def _volume_data(self, volume_id: str) -> Path:
        """The volume's directory on the host, its filesystem mounted. ProviderError when it is gone."""
        assert self.volumes is not None
        data = self.volumes.ensure_mounted(volume_id) / VOLUME_DATA
        if not data.is_dir():
            raise ProviderError(f"volume {volume_id} has no storage on this host (removed by hand?): delete it")
        return data

    def create_volume(self, volume_id: str, size: int) -> None:
        if self.volumes is None:
            return super().create_volume(volume_id, size)
        self.volumes.reserve(volume_id)
        self.volumes.format(volume_id, size)  # removes what it made on failure

    def destroy_volume(self, volume_id: str) -> None:
        if self.volumes is not None:
            self.volumes.destroy(volume_id)

    def volume_used(self, volume_id: str) -> int | None:
        return self.volumes.used(volume_id) if self.volumes is not None else None

    def volume_ids(self) -> set[str]:
        return self.volumes.names() if self.volumes is not None else set()

    # Template images (providers/docker/images.py)

    def check_bases(self, images: list[str]) -> None:
        template_images.check_base(self.client, images)

    def _builds_in_gvisor(self) -> bool:
        return (
            self.build_runtime and self.oci_runtime != STANDARD_RUNTIME and gvisor_build.runtime_registered(self.client)
        )

    def check_dockerfile(self, dockerfile: str) -> None:
        if self._builds_in_gvisor() and (problem := gvisor_build.unsupported(dockerfile)) is not None:
            raise Unprocessable(
                f"dockerfile, {problem} (WORKSPACE_TEMPLATE_BUILDER=engine builds it with the engine's builder, "
                "whose RUN steps run under runc)"
            )

    def build_image(self, build: ImageBuild, on_log: Callable[[str], None]) -> str:
        if self._builds_in_gvisor():
            return gvisor_build.build_in_gvisor(self.client, build, on_log)
        if self.build_runtime:
            on_log(
                f"warning: the engine has no {gvisor_build.BUILD_RUNTIME} runtime (scripts/setup-host.sh registers "
                "it): RUN steps run under runc, without network\n"
            )
        return template_images.build_image(self.client, build, on_log)

    def remove_image(self, ref: str) -> None:
        template_images.remove_image(self.client, ref)

    def start(self, ref: str) -> None:
        self.ways_in.forget(_workspace_id(ref))
        self.disks.ensure_mounted(_workspace_id(ref))
        self._remount_volumes(ref)
        if self.checkpoint_runtime is not None and self.checkpoints.exists(ref):
            self._resume(ref)
        else:
            with engine_errors("starting the workspace"):
                self.client.api.start(ref)
        probe_booted(self.runtime(ref).probe, lambda: self._inspect(ref)["State"])
        policy = self.egress.policy(_workspace_id(ref)) if self.egress is not None else None
        if policy is not None:  # its address may have changed (the manager hands it again after a server restart)
            assert self.egress is not None
            self.egress.attach(_workspace_id(ref), self._address(ref), policy)

    def _remount_volumes(self, ref: str) -> None:
        """Mount the volumes the stopped container binds, should the host have rebooted since (their images
        stay; a bind of an unmounted directory would hand the workspace an empty one)."""
        if self.volumes is None:
            return
        prefix = str(self.volumes.root) + "/"
        for mount in self._inspect(ref, "starting the workspace").get("Mounts") or []:
            source = str(mount.get("Source") or "")
            if source.startswith(prefix):
                self._volume_data(source.removeprefix(prefix).split("/", 1)[0])

    def _resume(self, ref: str) -> None:
        """Start a workspace from its checkpoint (memory and processes as they were), else afresh."""
        try:
            self.checkpoints.restore(ref)
        except ProviderError as exc:
            # A checkpoint of another runsc build, say: the files are on the disk, the processes are lost.
            log.warning(
                "workspace %s could not be restored from its checkpoint, starting it afresh: %s",
                _workspace_id(ref),
                exc.detail,
            )
            with engine_errors("starting the workspace"):
                self.client.api.start(ref)
        else:
            self.ways_in.signal_init(ref, LISTEN_AGAIN)
            # Should it not, commands still reach it, through the engine.
            if not self.ways_in.await_socket(_workspace_id(ref), present=True):
                log.warning("workspace %s was restored but its init did not listen again", _workspace_id(ref))
        finally:
            self.checkpoints.remove(ref)

    def stop(self, ref: str) -> None:
        self.wake(ref)  # a frozen sandbox holds the engine's signals until thawed
        self._stop(ref)

    def _stop(self, ref: str) -> None:
        """Stop a workspace that is not suspended."""
        self.ways_in.forget(_workspace_id(ref))
        with engine_errors("stopping the workspace"):
            self.client.api.stop(ref, timeout=STOP_TIMEOUT)

    def pause(self, ref: str) -> bool:
        details = self._inspect(ref)  # once, for the thaw and the runtime
        _thaw(details["Id"], details["HostConfig"].get("CgroupParent") or "")
        if self.checkpoint_runtime is None or details["HostConfig"].get("Runtime") != self.checkpoint_runtime:
            self._stop(ref)
            return False
        self.ways_in.signal_init(ref, LET_GO_OF_SOCKET)
        try:
            if not self.ways_in.await_socket(_workspace_id(ref), present=False):
                raise ProviderError(f"its init did not let go of its control socket within {SOCKET_PATIENCE:g} s")
            self.checkpoints.create(ref)
        except ProviderError as exc:
            log.warning(
                "workspace %s could not be checkpointed, stopping it (files kept, memory not): %s",
                _workspace_id(ref),
                exc.detail,
            )
            self._stop(ref)
            return False
        return True

    def snapshot(self, ref: str, snapshot_id: str, memory: bool) -> SnapshotTaken:
        """A copy of the workspace's disk (snapshots.py), taken with its sandbox frozen for the copy's length."""
        details = self._inspect(ref)
        workspace_id = _workspace_id(ref)
        running = bool(details["State"].get("Running"))
        checkpointable = self.checkpoint_runtime is not None and details["HostConfig"].get("Runtime") == (
            self.checkpoint_runtime
        )
        directory = self.snapshots.directory(snapshot_id)
        directory.mkdir(parents=True)
        kept, note = False, ""
        try:
            freezer = None
            if running:
                _thaw(details["Id"], details["HostConfig"].get("CgroupParent") or "")  # a suspended one answers
                freezer = container_freezer(details["Id"], details["HostConfig"].get("CgroupParent") or "")
                if memory and checkpointable:
                    note = self._snapshot_with_memory(ref, snapshot_id, freezer)
                    kept = not note
                if not kept:
                    # What gVisor may still hold of the workload's writes reaches the disk first; a sandbox that
                    # does not answer is copied as the host sees it.
                    with contextlib.suppress(AgentboxError):
                        self.runtime(ref).exec(ExecRequest(["sync"], cwd="/", timeout=30))
            else:
                self.disks.ensure_mounted(workspace_id)
            if not kept:
                self.snapshots.take(snapshot_id, workspace_id, freezer)
        except BaseException:
            self.snapshots.remove(snapshot_id)
            raise
        return SnapshotTaken(snapshot_id, kept, self.snapshots.size(snapshot_id), note)

    def _snapshot_with_memory(self, ref: str, snapshot_id: str, freezer: CgroupFreezer | None) -> str:
        """Checkpoint the running workspace into the snapshot and leave it running, then copy its disk before
        anything in it runs on: gVisor flushed the workload's writes as it saved it, so the files a fork finds are
        the ones its memory knew. Its init lets go of its control socket meanwhile (gVisor refuses to checkpoint a
        sandbox holding a host socket) and listens again after. Returns "" once both are taken, or why gVisor
        would not checkpoint it (nothing taken then). Raises ProviderError when the disk cannot be copied."""
        workspace_id = _workspace_id(ref)
        checkpoint = self.snapshots.directory(snapshot_id) / SNAPSHOT_CHECKPOINT
        self.ways_in.signal_init(ref, LET_GO_OF_SOCKET)
        try:
            try:
                if not self.ways_in.await_socket(workspace_id, present=False):
                    raise ProviderError(f"its init did not let go of its control socket within {SOCKET_PATIENCE:g} s")
                self.checkpoints.export(ref, checkpoint, SNAPSHOT_MEMORY)
            except ProviderError as exc:
                shutil.rmtree(checkpoint, ignore_errors=True)
                log.warning("snapshot %s of %s keeps files only: %s", snapshot_id, workspace_id, exc.detail)
                return exc.detail
            self.snapshots.take(snapshot_id, workspace_id, freezer)
            return ""
        finally:
            self.ways_in.forget(workspace_id)
            with contextlib.suppress(AgentboxError):
                self.ways_in.signal_init(ref, LISTEN_AGAIN)
                if not self.ways_in.await_socket(workspace_id, present=True):
                    log.warning("workspace %s was checkpointed but its init did not listen again", workspace_id)

    def _start_from_memory(self, ref: str, spec: WorkspaceSpec) -> None:
        """Start the new workspace from its snapshot's checkpoint (the source's memory and processes); a
        checkpoint that will not restore starts it afresh instead, with the snapshot's files."""
        assert spec.snapshot is not None
        directory = self.snapshots.directory(spec.snapshot) / SNAPSHOT_CHECKPOINT
        self.ways_in.leave_id(spec.id)
        try:
            self.checkpoints.start_from(ref, directory, SNAPSHOT_MEMORY)
        except ProviderError as exc:
            log.warning(
                "workspace %s could not be restored from snapshot %s, starting it afresh (files only): %s",
                spec.id,
                spec.snapshot,
                exc.detail,
            )
            start_and_await_ready(self.client, ref)
            return
        self.ways_in.signal_init(ref, LISTEN_AGAIN)
        if not self.ways_in.await_socket(spec.id, present=True):
            log.warning("workspace %s was restored but its init did not listen again", spec.id)
        probe_booted(self.runtime(ref).probe, lambda: self._inspect(ref)["State"])

    def delete_snapshot(self, snapshot_ref: str) -> None:
        self.snapshots.remove(snapshot_ref)

    def snapshot_refs(self) -> set[str]:
        return self.snapshots.names()

    def discard_memory(self, ref: str) -> None:
        if self.checkpoint_runtime is not None and self.checkpoints.exists(ref):
            self.checkpoints.remove(ref)

    def suspend(self, ref: str) -> None:
        """Freeze the sandbox's host cgroup (freezer.py): no CPU at all until `wake`."""
        details = self._inspect(ref)
        if not details["State"].get("Running"):
            raise Conflict(f"workspace {_workspace_id(ref)} is not running: only a running workspace is suspended")
        freezer = container_freezer(details["Id"], details["HostConfig"].get("CgroupParent") or "")
        if freezer is None:
            raise ProviderError(
                f"the cgroup of workspace {_workspace_id(ref)} was not found under {CGROUP_ROOT}: run the server on "
                "the engine's host, with /sys/fs/cgroup as the engine sees it"
            )
        freezer.freeze()

    def wake(self, ref: str) -> None:
        freezer = self._cgroup(ref, container_freezer)
        if freezer is not None:
            try:
                freezer.thaw()
                return
            except OSError:  # its cgroup went meanwhile (a stop, a removal)
                pass
        # Not running (then not frozen either), not seen yet, or just stopped: the engine says what is there.
        try:
            details = self._inspect(ref)
        except WorkspaceGone:
            return
        _thaw(details["Id"], details["HostConfig"].get("CgroupParent") or "")

    def _inspect(self, ref: str, doing: str = "inspecting the workspace") -> dict[str, Any]:
        """The container as the engine inspects it (its cgroup remembered); WorkspaceGone when it is gone."""
        try:
            with engine_errors(doing):
                details: dict[str, Any] = self.client.api.inspect_container(ref)
        except WorkspaceGone:
            self._cgroups.pop(ref, None)
            raise
        self._cgroups[ref] = (details["Id"], details["HostConfig"].get("CgroupParent") or "")
        return details

    def _cgroup(self, ref: str, read: Callable[[str, str], _Found | None]) -> _Found | None:
        """`read` of the cgroup of the container `ref` under the id and cgroup parent seen last; None when not
        seen yet, or when that cgroup is not there: a stopped container has none (the engine makes it again
        at a start, under the same path), one removed never again.

        The periodic usage reads of every workspace (the usage sampler's, the idle check's) and the wake of every
        call into a suspended one would otherwise each ask the engine (an inspect: ~2 ms of the engine's time
        with 50 workspaces present, more under load; bench/crowd.py)."""
        known = self._cgroups.get(ref)
        if known is None:
            return None
        try:
            return read(*known)
        except OSError:  # it went while being read
            return None

    def reboot_unreachable(self) -> list[str]:
        """Restart the running gVisor sandboxes that commands can no longer reach; return their refs.

        A sandbox stays with the runsc build that booted it, and after an upgrade in place the new
        build can neither exec into it nor kill it ("connecting to control server ... invalid
        argument"). A stop still works (the engine gives up on the signal after the timeout), and
        the start boots it under the new build with its files, which live on its disk; its
        processes are lost. Several at once: each stop waits out that timeout.
        """
        with engine_errors("listing workspaces"):
            running = self.client.api.containers(
                filters={"label": [WORKSPACE_LABEL, f"{INSTANCE_LABEL}={self.instance}"]}
            )
        sandboxed = [CONTAINER_PREFIX + c["Labels"][WORKSPACE_LABEL] for c in running]

        def reboot_if_unreachable(ref: str) -> bool:
            details = self._inspect(ref)
            if details["HostConfig"].get("Runtime") == STANDARD_RUNTIME:
                return False
            # A suspended one is thawed for the probe (a frozen sandbox answers nothing), and frozen again after.
            frozen = container_freezer(details["Id"], details["HostConfig"].get("CgroupParent") or "")
            if frozen is not None and not frozen.frozen():
                frozen = None
            if frozen is not None:
                frozen.thaw()
            try:
                # Through the engine: what matters is whether this runsc can still reach the sandbox.
                HelperChannel(EngineTransport(self.client, ref, self.user)).probe()
            except ProviderError as exc:
                log.warning("workspace %s cannot run commands (%s): restarting it", _workspace_id(ref), exc.detail)
            else:
                if frozen is not None:
                    frozen.freeze()
                return False
            try:
                self.stop(ref)
                self.start(ref)
            except AgentboxError as exc:  # one that will not come back must not keep the server down
                log.warning("workspace %s could not be restarted: %s", _workspace_id(ref), exc.detail)
                return False
            return True

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="agentbox-reboot") as pool:
            rebooted = list(pool.map(reboot_if_unreachable, sandboxed))
        return [ref for ref, done in zip(sandboxed, rebooted, strict=True) if done]

    def destroy(self, ref: str) -> None:
        """Remove the container, then its disk, control directory, key and firewall rules.

        When the engine does not answer in time (overloaded, say), the removal goes on in the background
        (`BackgroundRemovals`) and ProviderUnavailable says so: the engine usually finishes what it was asked,
        late, and the disk must not stay mounted until reconciliation comes by, or past the server's end.
        """
        workspace_id = _workspace_id(ref)
        if self.removals.under_way(workspace_id):
            return  # the background finishes it or leaves it to reconciliation
        try:
            self._remove_containers(workspace_id)
        except ProviderUnavailable as exc:
            self.removals.begin(workspace_id)
            raise ProviderUnavailable(
                f"{exc.detail.removesuffix(', try again')}; the removal goes on in the background: the container, "
                f"then its disk, go once the engine answers (or at the server's next reconciliation)"
            ) from None
        self._release(workspace_id)

    def _remove_containers(self, workspace_id: str) -> None:
        """Remove the workspace's containers. Raises ProviderUnavailable when the engine does not answer in time."""
        with engine_errors("removing the workspace"):
            # By label, not by name: whatever carries this workspace's id goes.
            labels = [f"{WORKSPACE_LABEL}={workspace_id}", f"{INSTANCE_LABEL}={self.instance}"]
            self._cgroups.pop(CONTAINER_PREFIX + workspace_id, None)
            for container in self.client.api.containers(all=True, filters={"label": labels}):
                _thaw(container["Id"])  # a frozen sandbox holds the kill of a forced removal until thawed
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
                    try:
                        self.client.api.remove_container(container["Id"], v=True, force=True)
                    except docker.errors.APIError as exc:
                        if "already in progress" in str(exc.explanation):
                            self._await_removal(container["Id"])  # a delete at the same time: it finishes it
                            continue
                        # A sandbox that this host's runsc cannot signal (booted by another build)
                        # refuses a forced removal; a stop still ends it.
                        self.client.api.stop(container["Id"], timeout=STOP_TIMEOUT)
                        self.client.api.remove_container(container["Id"], v=True, force=True)

    def _release(self, workspace_id: str) -> None:
        """What a workspace holds besides its container: its disk, control directory, key and firewall rules."""
        self.disks.destroy(workspace_id)
        self.ways_in.remove(workspace_id)
        if self.egress is not None:
            try:
                self.egress.detach(workspace_id)
            except AgentboxError as exc:  # the next restore drops its redirect
                log.warning("removing the egress redirect of %s failed: %s", workspace_id, exc.detail)
        if self.network is not None:
            try:
                self.network.leave(workspace_id)
            except AgentboxError as exc:  # the workspace is gone; the next restore drops its rules
                log.warning("removing the firewall rules of %s failed: %s", workspace_id, exc.detail)

    def close(self) -> None:
        """Stop the removals under way in the background, releasing their workspaces' disks now (see
        BackgroundRemovals.close), and the egress proxy."""
        self.removals.close()
        if self.egress is not None:
            self.egress.close()

    def _await_removal(self, container: str) -> None:
        """Wait until the engine has removed the container. Raises ProviderUnavailable past REMOVAL_PATIENCE."""
        deadline = time.monotonic() + REMOVAL_PATIENCE
        while time.monotonic() < deadline:
            try:
                self.client.api.inspect_container(container)
            except docker.errors.NotFound:
                return
            time.sleep(0.1)
        raise ProviderUnavailable(
            f"removing the workspace: the engine did not finish removing container {container[:12]} in "
            f"{REMOVAL_PATIENCE:g} s"
        )

    def state(self, ref: str) -> ProviderState:
        try:
            with engine_errors("inspecting the workspace"):
                details = self.client.api.inspect_container(ref)
        except WorkspaceGone:
            return "missing"
        state = details["State"]
        return "running" if state.get("Running") or state.get("Restarting") else "stopped"

    def usage(self, ref: str) -> Usage | None:
        found = self._cgroup(ref, cgroup_usage)
        if found is None:
            details = self._inspect(ref, "measuring the workspace")
            if not details["State"].get("Running"):
                return None
            found = cgroup_usage(details["Id"], details["HostConfig"].get("CgroupParent") or "")
        if found is None:  # a cgroup layout not known here (or not visible to this server): the engine knows
            with engine_errors("measuring the workspace"):
                found = stats_usage(self.client.api.stats(ref, stream=False, one_shot=True))
        if found is None:
            return None
        return dataclasses.replace(found, disk_bytes=self.disks.used(_workspace_id(ref)))

    def inventory(self) -> dict[str, tuple[str, ProviderState]]:
        with engine_errors("listing workspaces"):
            containers = self.client.api.containers(
                all=True, filters={"label": [WORKSPACE_LABEL, f"{INSTANCE_LABEL}={self.instance}"]}
            )
        found: dict[str, tuple[str, ProviderState]] = {}
        for container in containers:
            workspace_id = container["Labels"][WORKSPACE_LABEL]
            running = container["State"] in ("running", "restarting")
            found[workspace_id] = (CONTAINER_PREFIX + workspace_id, "running" if running else "stopped")
        for name in self.disks.names():
            found.setdefault(name, (CONTAINER_PREFIX + name, "missing"))  # a disk whose container is gone
        for ref in set(self._cgroups) - {ref for ref, state in found.values() if state != "missing"}:
            self._cgroups.pop(ref, None)  # removed elsewhere (another replica, by hand)
        return found

    # The runtime: the helper's channel, over the way in the workspace has

    def runtime(self, ref: str) -> HelperChannel:
        return HelperChannel(self.ways_in.transport(ref, _workspace_id(ref), self._fallback(ref)))

    def _fallback(self, ref: str) -> Transport:
        """The way in when the helper's own listeners cannot be used: the Engine API's exec."""
        return EngineTransport(self.client, ref, self.user)

    def reserved_ports(self, ref: str) -> frozenset[int]:
        return self.ways_in.reserved_ports(ref, _workspace_id(ref))


def _workspace_id(ref: str) -> str:
    return ref.removeprefix(CONTAINER_PREFIX)


def install_helper(directory: Path) -> Path:
    """A copy of the helper named by its digest, bind-mounted read-only into every workspace.

    A copy, so that rebuilding the helper never changes what running workspaces see.
    """
    target = directory / f"agentbox-exec-{helper_digest()}"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(helper_bytes())
        partial.chmod(0o755)
        partial.replace(target)
    return target


def _thaw(container_id: str, parent: str = "") -> None:
    """Thaw the container's cgroup if it is frozen (a suspended workspace); nothing otherwise."""
    freezer = container_freezer(container_id, parent)
    if freezer is not None:
        freezer.thaw()
