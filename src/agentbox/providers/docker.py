"""Workspaces as containers on a Docker engine, under gVisor's runsc or the standard runc.

Every command and file operation runs *inside* the container through the static
`agentbox-exec` helper, via the Engine API's exec. Going through the sandbox rather than
the engine's archive API matters under gVisor: runsc caches the root filesystem, so a file
changed from the host side (`docker cp`) may never be seen by the workload, and a symlink
can only ever resolve within the container it lives in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount

from agentbox.errors import AgentboxError, BadRequest, FileError, ProviderError, ProviderUnavailable, WorkspaceGone
from agentbox.network import NO_NETWORK, mac_address
from agentbox.providers.base import (
    Capabilities,
    DirEntry,
    EntryType,
    ExecEvent,
    ExecRequest,
    Exit,
    FileStat,
    Output,
    Provider,
    ProviderState,
    WorkspaceSpec,
    signal_of,
)
from agentbox.providers.disks import HOME, TMP, WORKSPACE, Disks
from agentbox.runtime import STANDARD_RUNTIME
from agentbox.sandbox import HELPER_IN_WORKSPACE, helper_bytes, helper_digest

log = logging.getLogger("agentbox.providers.docker")

WORKSPACE_LABEL = "agentbox.workspace.id"
# Several deployments may share an engine; each reconciles only its own sandboxes.
INSTANCE_LABEL = "agentbox.instance"
CONTAINER_PREFIX = "agentbox-"
HELPER = HELPER_IN_WORKSPACE
HOME_IN_WORKSPACE = "/home/agent"
READY_LINE = b"agentbox-exec ready"  # what init prints first (agentbox-exec.c)
# Room in a gVisor sandbox's host cgroup for gVisor itself (sentry and gofer) on top of the
# workload's limit, plus an eighth of the limit for what the workload allocates between two
# checks of the in-sandbox OOM killer.
GVISOR_MEMORY_HEADROOM = 128 << 20
GVISOR_HOST_PIDS_PER_TASK = 40
TIMEOUT_EXIT_CODE = 124  # agentbox-exec's code for "killed at the deadline", as timeout(1)
# If the helper itself is wedged, the host gives up this long after the command's deadline.
HOST_GRACE_SECONDS = 10.0
STOP_TIMEOUT = 10  # seconds between SIGTERM and SIGKILL when a workspace stops
NO_LIMIT = 1 << 62
_TYPES: dict[bytes, EntryType] = {b"f": "file", b"d": "dir", b"l": "symlink", b"o": "other"}


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Turn the Docker SDK's exceptions into provider errors that say what to do."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise WorkspaceGone(f"{what}: the container no longer exists ({exc.explanation})") from None
    except docker.errors.APIError as exc:
        raise ProviderError(f"{what}: the Docker engine said: {exc.explanation or exc}") from None
    except requests.exceptions.Timeout:
        raise ProviderUnavailable(
            f"{what}: the Docker engine did not answer in time; it may be overloaded or restarting, try again"
        ) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ProviderUnavailable(
            f"{what}: the Docker engine cannot be reached ({exc}); is dockerd running? (`make run` starts it)"
        ) from None


class _Frames:
    """A hijacked Engine API connection: Docker's multiplexed stdout/stderr frames, and stdin."""

    def __init__(self, response_socket: Any, deadline: float | None = None) -> None:
        self._sock: socket.socket = getattr(response_socket, "_sock", response_socket)
        self._keepalive = response_socket
        self._deadline = deadline
        self._pending = b""

    def send(self, chunks: Iterable[bytes]) -> int:
        """Write all of `chunks` to the command's stdin, then close it; return the bytes sent."""
        sent = 0
        try:
            for chunk in chunks:
                self._sock.sendall(chunk)
                sent += len(chunk)
        except BrokenPipeError:
            pass  # the command stopped reading; its exit status says why
        self._sock.shutdown(socket.SHUT_WR)
        return sent

    def _recv_exactly(self, size: int) -> bytes | None:
        while len(self._pending) < size:
            if self._deadline is not None:
                self._sock.settimeout(max(0.01, self._deadline - time.monotonic()))
            data = self._sock.recv(max(65536, size - len(self._pending)))
            if not data:
                return None
            self._pending += data
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(1 for stdout | 2 for stderr, data) until the command closes its output.

        Raises TimeoutError if the host-side deadline passes first.
        """
        while True:
            header = self._recv_exactly(8)
            if header is None:
                return
            stream, size = struct.unpack(">BxxxL", header)
            payload = self._recv_exactly(size)
            if payload is None:
                return
            yield stream, payload

    def read_stdout(self) -> Iterator[bytes]:
        for stream, data in self.frames():
            if stream == 1:
                yield data

    def close(self) -> None:
        self._sock.close()
        self._keepalive.close()


class _Exec(_Frames):
    """One exec of the helper in a workspace."""

    def __init__(
        self,
        provider: DockerProvider,
        ref: str,
        argv: list[str],
        *,
        stdin: bool = False,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        deadline: float | None = None,
    ):
        self._api = provider.client.api
        with engine_errors("exec"):
            self.id = self._api.exec_create(
                ref,
                [HELPER, *argv],
                stdin=stdin,
                user=provider.user,
                workdir=cwd,
                environment=[f"{k}={v}" for k, v in (env or {}).items()],
            )["Id"]
            super().__init__(self._api.exec_start(self.id, socket=True), deadline)

    def exit_code(self) -> int:
        # The engine may record the exit code a moment after the output closes.
        for _ in range(200):
            with engine_errors("exec"):
                details = self._api.exec_inspect(self.id)
            if not details.get("Running") and details.get("ExitCode") is not None:
                return int(details["ExitCode"])
            time.sleep(0.005)
        raise ProviderError(
            "the command ended without an exit status: the workspace's sandbox stopped under it "
            "(it restarts by itself if it crashed); run the command again"
        )


class _HeaderReader:
    """Reads the helper's `get` answer: one header line, then a body."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.rest = b""

    def header(self) -> bytes:
        buffer = b""
        for chunk in self._chunks:
            buffer += chunk
            if b"\n" in buffer:
                line, self.rest = buffer.split(b"\n", 1)
                return line
        return buffer

    def body(self) -> Iterator[bytes]:
        if self.rest:
            yield self.rest
        yield from self._chunks


def _raise_helper_error(line: bytes, path: str) -> None:
    if line.startswith(b"E "):
        _, errno_name, message = [*line.decode("utf-8", "replace").split(" ", 2), "", ""][:3]
        raise FileError(errno_name, message, path)
    raise ProviderError(f"{path}: unexpected answer from the workspace helper: {line[:200]!r}")


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
        runtime: str,
        user: str,
        isolation: str,
        disks: Disks,
        helper: Path,
        instance: str,
    ) -> None:
        self.client = client
        self.name = name
        self.runtime = runtime
        self.user = user
        self.disks = disks
        self.helper = helper
        self.instance = instance
        self._isolation = isolation
        self._background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agentbox-disk")

    def capabilities(self) -> Capabilities:
        return Capabilities(runtime=self.runtime, isolation=self._isolation)

    # Lifecycle

    def create(self, spec: WorkspaceSpec) -> str:
        ref = CONTAINER_PREFIX + spec.id
        disk = self.disks.reserve(spec.id)
        # mkfs + mount (~45 ms) overlap the engine's create call.
        formatting = self._background.submit(self.disks.format, spec.id, spec.disk)
        binds = [(self.helper, HELPER, True), (disk / WORKSPACE, "/workspace", False)]
        binds += [(disk / TMP, "/tmp", False), (disk / HOME, HOME_IN_WORKSPACE, False)]
        init = [HELPER, "init"]
        host_memory, host_pids = spec.memory, spec.pids_limit
        if self.runtime != STANDARD_RUNTIME:
            # gVisor's own kernel shares the workload's cgroups, and hitting a host limit kills the
            # whole sandbox, not the process. So the limits are enforced inside the sandbox, with
            # headroom on the host: init kills the biggest process past the memory limit (see
            # cmd_init in agentbox-exec.c), and every command runs with RLIMIT_NPROC, which gVisor
            # counts per sandbox (each task costs ~15 host threads under ptrace, measured). Not
            # Docker's --ulimit: runsc applies that to its own host process too.
            host_memory = spec.memory + GVISOR_MEMORY_HEADROOM + spec.memory // 8
            init += ["-M", str(spec.memory), "-P", str(spec.pids_limit)]
            host_pids = spec.pids_limit * GVISOR_HOST_PIDS_PER_TASK + 256
        options: dict[str, Any] = {
            "name": ref,
            "hostname": spec.id.replace("_", "-"),
            "labels": {WORKSPACE_LABEL: spec.id, INSTANCE_LABEL: self.instance},
            "runtime": self.runtime,
            "user": self.user,
            "working_dir": "/workspace",
            "environment": {"HOME": HOME_IN_WORKSPACE},
            "mounts": [Mount(target, str(source), type="bind", read_only=ro) for source, target, ro in binds],
            "read_only": True,
            "nano_cpus": int(spec.cpu * 1e9),
            "mem_limit": host_memory,
            "memswap_limit": host_memory,  # no swap: the memory limit is the limit
            "pids_limit": host_pids,
            # A sandbox that dies (gVisor itself out of host threads or memory: the host limits are
            # the last line; its exit status is then not always an error) comes back by itself, as
            # after an engine restart; its files live on the disk and survive. `stop` still stops.
            "restart_policy": {"Name": "unless-stopped"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if spec.network:
            options["network"] = spec.network
        if spec.network != NO_NETWORK:
            options["mac_address"] = mac_address(spec.id)  # how the firewall knows this workspace
        try:
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
            self._start_and_wait(ref)
        except BaseException:
            with contextlib.suppress(Exception):
                formatting.result()  # never remove a disk while it is still being made
            with contextlib.suppress(ProviderError):  # engine down: reconciliation removes the rest later
                self.destroy(ref)
            raise
        return ref

    def _start_and_wait(self, ref: str) -> None:
        """Start a created container; return once its init has run in the sandbox and said so.

        Ready means code has run in the sandbox, not merely that the engine started it; init's
        own line proves that without the extra round trip of a probe exec (~100 ms under runsc).
        """
        with engine_errors("starting the container"):
            params = {"stdout": 1, "stderr": 1, "stream": 1}
            attached = _Frames(self.client.api.attach_socket(ref, params=params), time.monotonic() + 60)
        output = b""
        try:
            with engine_errors("starting the container"):
                self.client.api.start(ref)
            for _, data in attached.frames():
                output += data
                if READY_LINE in output:
                    return
        except TimeoutError:
            pass
        finally:
            attached.close()
        raise ProviderError(
            f"the workspace started but its init never reported ready within 60 s ({output[-300:]!r}): the engine "
            "may be overloaded; try again, and run `agentbox doctor` if it keeps failing"
        )

    def _wait_ready(self, ref: str) -> None:
        """Ready means a command has run: the sandbox is up, not merely created."""
        call = _Exec(self, ref, ["probe"], deadline=time.monotonic() + 60)
        try:
            output = b"".join(data for _, data in call.frames())
            code = call.exit_code()
        finally:
            call.close()
        if code != 0:
            raise ProviderError(f"the workspace started but cannot run commands (exit {code}): {output[-300:]!r}")

    def start(self, ref: str) -> None:
        self.disks.ensure_mounted(_workspace_id(ref))
        with engine_errors("starting the workspace"):
            self.client.api.start(ref)
        self._wait_ready(ref)

    def stop(self, ref: str) -> None:
        with engine_errors("stopping the workspace"):
            self.client.api.stop(ref, timeout=STOP_TIMEOUT)

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
            with engine_errors("inspecting the workspace"):
                if self.client.api.inspect_container(ref)["HostConfig"].get("Runtime") == STANDARD_RUNTIME:
                    return False
            try:
                self._wait_ready(ref)
                return False
            except ProviderError as exc:
                log.warning("workspace %s cannot run commands (%s): restarting it", _workspace_id(ref), exc.detail)
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
        workspace_id = _workspace_id(ref)
        with engine_errors("removing the workspace"):
            # By label, not by name: whatever carries this workspace's id goes.
            labels = [f"{WORKSPACE_LABEL}={workspace_id}", f"{INSTANCE_LABEL}={self.instance}"]
            for container in self.client.api.containers(all=True, filters={"label": labels}):
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
                    try:
                        self.client.api.remove_container(container["Id"], v=True, force=True)
                    except docker.errors.APIError:
                        # A sandbox that this host's runsc cannot signal (booted by another build)
                        # refuses a forced removal; a stop still ends it.
                        self.client.api.stop(container["Id"], timeout=STOP_TIMEOUT)
                        self.client.api.remove_container(container["Id"], v=True, force=True)
        self.disks.destroy(workspace_id)

    def state(self, ref: str) -> ProviderState:
        try:
            with engine_errors("inspecting the workspace"):
                details = self.client.api.inspect_container(ref)
        except WorkspaceGone:
            return "missing"
        state = details["State"]
        return "running" if state.get("Running") or state.get("Restarting") else "stopped"

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
        return found

    # Commands

    def exec_stream(self, ref: str, request: ExecRequest) -> Iterator[ExecEvent]:
        argv = ["run", "-m", str(request.output_limit)]
        deadline = None
        if request.timeout is not None:
            argv += ["-t", f"{request.timeout:g}"]
            deadline = time.monotonic() + request.timeout + HOST_GRACE_SECONDS
        started = time.monotonic()
        # Started here, not lazily, so that a missing workspace fails before any output is promised.
        call = _Exec(self, ref, [*argv, "--", *request.argv], cwd=request.cwd, env=request.env, deadline=deadline)
        return self._events(call, request.timeout, started)

    def _events(self, call: _Exec, timeout: float | None, started: float) -> Iterator[ExecEvent]:
        try:
            try:
                first = True
                for stream, data in call.frames():
                    if first and data.startswith(b"OCI runtime exec failed"):
                        # The engine could not start the command at all; it says why in-band.
                        raise _engine_exec_failure(data + b"".join(d for _, d in call.frames()))
                    first = False
                    yield Output("stdout" if stream == 1 else "stderr", data)
            except TimeoutError:
                duration_ms = int((time.monotonic() - started) * 1000)
                yield Exit(exit_code=TIMEOUT_EXIT_CODE, timed_out=True, duration_ms=duration_ms)
                return
            code = call.exit_code()
            duration_ms = int((time.monotonic() - started) * 1000)
            timed_out = code == TIMEOUT_EXIT_CODE and timeout is not None and duration_ms >= timeout * 1000
            yield Exit(exit_code=code, timed_out=timed_out, duration_ms=duration_ms, signal=signal_of(code))
        finally:
            # Closing the connection early makes the helper kill the command's process group.
            call.close()

    # Files

    def _get(self, ref: str, path: str) -> tuple[_Exec, _HeaderReader, bytes]:
        call = _Exec(self, ref, ["get", path])
        reader = _HeaderReader(call.read_stdout())
        header = reader.header()
        if header.startswith((b"F ", b"D")):
            return call, reader, header
        call.close()
        _raise_helper_error(header, path)
        raise AssertionError("unreachable")

    def stat(self, ref: str, path: str) -> FileStat | list[DirEntry]:
        call, reader, header = self._get(ref, path)
        try:
            if header.startswith(b"F "):
                _, size, mode = header.split(b" ")
                return FileStat(size=int(size), mode=int(mode, 8))
            return _parse_listing(b"".join(reader.body()))
        finally:
            call.close()

    def read_file(self, ref: str, path: str) -> tuple[FileStat, Iterator[bytes]]:
        call, reader, header = self._get(ref, path)
        if not header.startswith(b"F "):
            call.close()
            raise FileError("EISDIR", "Is a directory", path)
        _, size, mode = header.split(b" ")

        def body() -> Iterator[bytes]:
            try:
                yield from reader.body()
            finally:
                call.close()

        return FileStat(size=int(size), mode=int(mode, 8)), body()

    def write_file(self, ref: str, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        call = _Exec(self, ref, ["put", path, "-p", f"{mode:o}", "-s", str(size)], stdin=True)
        try:
            call.send(data)
            answer = b"".join(call.read_stdout()).strip()
        finally:
            call.close()
        if not answer.startswith(b"OK"):
            _raise_helper_error(answer, path)
        return int(answer.split(b" ")[1])

    def read_archive(self, ref: str, path: str) -> Iterator[bytes]:
        if not isinstance(self.stat(ref, path), list):
            raise FileError("ENOTDIR", "Not a directory", path)
        call = _Exec(self, ref, ["run", "-m", str(NO_LIMIT), "--", "tar", "-c", "-f", "-", "-C", path, "."])

        def body() -> Iterator[bytes]:
            try:
                yield from call.read_stdout()
            finally:
                call.close()

        return body()

    def write_archive(self, ref: str, path: str, data: Iterable[bytes]) -> None:
        call = _Exec(self, ref, ["mkdir", path])
        try:
            answer = b"".join(call.read_stdout()).strip()
        finally:
            call.close()
        if answer != b"OK":
            _raise_helper_error(answer, path)
        call = _Exec(self, ref, ["run", "-i", "-m", "65536", "--", "tar", "-x", "-f", "-", "-C", path], stdin=True)
        try:
            call.send(data)
            errors = b"".join(chunk for stream, chunk in call.frames() if stream == 2)
            code = call.exit_code()
        finally:
            call.close()
        if code != 0:
            message = errors.decode("utf-8", "replace").strip()[-1000:]
            raise BadRequest(f"unpacking the archive into {path} failed (tar exit {code}): {message}")


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


def _engine_exec_failure(message: bytes) -> ProviderError | BadRequest:
    text = message.decode("utf-8", "replace").strip()
    if "working directory" in text or "chdir" in text:
        return BadRequest(f"the working directory does not exist in the workspace: create it first ({text})")
    if "control server" in text:
        return ProviderError(
            f"the workspace's sandbox cannot be reached by this host's runsc ({text}): it was started by another "
            "runsc build (an upgrade in place). Stop and start the workspace, or restart the server, which does so "
            "for every such workspace; its files are kept"
        )
    return BadRequest(f"the command could not be started: {text}")


def _parse_listing(data: bytes) -> list[DirEntry]:
    entries = []
    for record in filter(None, data.split(b"\0")):
        kind, size, mode, mtime, name = record.split(b" ", 4)
        entries.append(
            DirEntry(
                name=name.decode("utf-8", "replace"),
                type=_TYPES.get(kind, "other"),
                size=int(size),
                mode=int(mode, 8),
                mtime=int(mtime),
            )
        )
    return entries
