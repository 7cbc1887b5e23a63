"""A provider that keeps workspaces in memory, for unit tests of everything above the provider layer.

Files are a dict per workspace; commands are answered by a handler (by default a few shell
builtins: `true`, `false`, `echo`, `cat`, `exit N`). The provider holds the sandboxes (the
lifecycle); `FakeRuntime`, which `runtime(ref)` hands out, reaches inside one. It honours the
same contract as the real providers (tests/provider_contract.py), so the manager, the pool and
the API can be tested without Docker, root or a network.
"""

from __future__ import annotations

import io
import itertools
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agentbox.errors import BadRequest, FileError, ProviderError, WorkspaceGone
from agentbox.providers.base import Capabilities, Provider, ProviderState, SnapshotTaken, Usage, WorkspaceSpec
from agentbox.sandbox.process_table import ProcessTable
from agentbox.sandbox.runtime import (
    DirEntry,
    ExecEvent,
    ExecRequest,
    Exit,
    FileStat,
    Output,
    PortConnection,
    Runtime,
    WatchEvent,
)

#: A fake that enforces egress policies by name, as the Docker provider with its egress proxy does.
BY_NAME = Capabilities(
    runtime="fake",
    isolation="none (a unit-test fake)",
    network_policies=frozenset({"egress", "none", "allow", "rules"}),
    egress_by_name=True,
)
#: How long a call into a suspended fake sandbox waits for a wake before it fails.
SUSPENDED_CALL_WAITS = 1.0


@dataclass
class FakeSandbox:
    id: str
    spec: WorkspaceSpec
    state: ProviderState = "running"
    files: dict[str, bytes] = field(default_factory=dict)
    usage: Usage | None = None  # what usage() says while it runs (None: not measured)
    suspended: bool = False


#: Answers a command in a sandbox: (exit code, stdout, stderr).
Handler = Callable[[FakeSandbox, ExecRequest], tuple[int, bytes, bytes]]


def builtins(sandbox: FakeSandbox, request: ExecRequest) -> tuple[int, bytes, bytes]:
    """`;`-separated `true`, `false`, `echo`, `cat FILE` and `exit N`, as sh would run them."""
    script = request.argv[2] if request.argv[:2] == ["/bin/sh", "-c"] else shlex.join(request.argv)
    code, stdout, stderr = 0, b"", b""
    for command in filter(None, (shlex.split(part) for part in script.split(";"))):
        name, args = command[0], command[1:]
        if name == "exit":
            return int(args[0]), stdout, stderr
        if name in ("true", "false"):
            code = 0 if name == "true" else 1
        elif name == "echo":
            code, stdout = 0, stdout + (" ".join(args) + "\n").encode()
        elif name == "cat" and args[0] in sandbox.files:
            code, stdout = 0, stdout + sandbox.files[args[0]]
        elif name == "cat":
            code, stderr = 1, stderr + f"cat: {args[0]}: No such file or directory\n".encode()
        else:
            code, stderr = 127, stderr + f"sh: {name}: not found\n".encode()
    return code, stdout, stderr


class FakeProvider(Provider):
    def __init__(
        self,
        name: str = "fake",
        handler: Handler = builtins,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self._capabilities = capabilities or Capabilities(runtime="fake", isolation="none (a unit-test fake)")
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.calls: list[tuple[str, str]] = []  # (method, ref), for tests that check what was asked
        self.volumes: dict[str, int] = {}  # volume id -> size, with `Capabilities.volumes`
        self.networks: dict[str, Any] = {}  # ref -> the policy `set_network` gave it last
        self._refs = itertools.count(1)
        self.snapshots: dict[str, dict[str, bytes]] = {}  # snapshot ref -> the files it holds
        self._lock = threading.Lock()

    def capabilities(self) -> Capabilities:
        return self._capabilities

    def _get(self, ref: str) -> FakeSandbox:
        sandbox = self.sandboxes.get(ref)
        if sandbox is None:
            raise WorkspaceGone(f"{ref}: no such sandbox")
        return sandbox

    def _running(self, ref: str) -> FakeSandbox:
        sandbox = self._get(ref)
        if sandbox.state != "running":
            raise WorkspaceGone(f"{ref}: the sandbox is stopped")
        # A frozen sandbox keeps a call waiting until it is thawed (a concurrent caller's wake may be a moment
        # behind the row that says it is awake); a core that forgot to wake it fails here.
        deadline = time.monotonic() + SUSPENDED_CALL_WAITS
        while sandbox.suspended:
            if time.monotonic() > deadline:
                raise ProviderError(f"{ref}: the sandbox is suspended: wake it first")
            time.sleep(0.005)
        return sandbox

    def create_volume(self, volume_id: str, size: int) -> None:
        if not self._capabilities.volumes:
            return super().create_volume(volume_id, size)
        self.volumes[volume_id] = size

    def destroy_volume(self, volume_id: str) -> None:
        self.volumes.pop(volume_id, None)

    def volume_ids(self) -> set[str]:
        return set(self.volumes)

    # Lifecycle

    def create(self, spec: WorkspaceSpec) -> str:
        missing = [mount.volume for mount in spec.volumes if mount.volume not in self.volumes]
        if missing:  # the core must never hand over a volume that is not made (or deleted)
            raise ProviderError(f"no volume {', '.join(missing)}")
        with self._lock:
            ref = f"fake-{next(self._refs)}"
            self.sandboxes[ref] = FakeSandbox(spec.id, spec)
            if spec.snapshot is not None:
                if spec.snapshot not in self.snapshots:
                    del self.sandboxes[ref]
                    raise ProviderError(f"no snapshot {spec.snapshot}")
                self.sandboxes[ref].files = dict(self.snapshots[spec.snapshot])
        self.calls.append(("create", ref))
        return ref

    def snapshot(self, ref: str, snapshot_id: str, memory: bool) -> SnapshotTaken:
        if not self._capabilities.snapshots:
            return super().snapshot(ref, snapshot_id, memory)
        files = dict(self._get(ref).files)
        self.snapshots[snapshot_id] = files
        self.calls.append(("snapshot", ref))
        return SnapshotTaken(snapshot_id, False, sum(len(data) for data in files.values()))

    def delete_snapshot(self, snapshot_ref: str) -> None:
        self.snapshots.pop(snapshot_ref, None)

    def snapshot_refs(self) -> set[str]:
        return set(self.snapshots)

    def set_network(self, ref: str, policy: Any) -> None:
        if not self._capabilities.egress_by_name:
            super().set_network(ref, policy)
        self.calls.append(("set_network", ref))
        self.networks[ref] = policy

    def start(self, ref: str) -> None:
        self.calls.append(("start", ref))
        self._get(ref).state = "running"

    def stop(self, ref: str) -> None:
        self.calls.append(("stop", ref))
        sandbox = self._get(ref)
        sandbox.state, sandbox.suspended = "stopped", False

    def suspend(self, ref: str) -> None:
        if not self._capabilities.suspend:
            super().suspend(ref)
        self.calls.append(("suspend", ref))
        self._running(ref).suspended = True

    def wake(self, ref: str) -> None:
        self.calls.append(("wake", ref))
        if (sandbox := self.sandboxes.get(ref)) is not None:
            sandbox.suspended = False

    def destroy(self, ref: str) -> None:
        self.calls.append(("destroy", ref))
        self.sandboxes.pop(ref, None)

    def state(self, ref: str) -> ProviderState:
        sandbox = self.sandboxes.get(ref)
        return "missing" if sandbox is None else sandbox.state

    def inventory(self) -> dict[str, tuple[str, ProviderState]]:
        return {sandbox.id: (ref, sandbox.state) for ref, sandbox in list(self.sandboxes.items())}

    def usage(self, ref: str) -> Usage | None:
        sandbox = self._get(ref)
        return sandbox.usage if sandbox.state == "running" and not sandbox.suspended else None

    def runtime(self, ref: str) -> FakeRuntime:
        return FakeRuntime(self, ref)


class FakeRuntime(Runtime):
    """Inside one fake sandbox: its files and the provider's handler. No watches, ports or background
    processes (BadRequest, as a runtime that cannot do them says; `Capabilities` say so beforehand)."""

    def __init__(self, provider: FakeProvider, ref: str) -> None:
        self.provider = provider
        self.ref = ref

    def _running(self) -> FakeSandbox:
        return self.provider._running(self.ref)

    # Commands

    def exec_stream(self, request: ExecRequest) -> Iterator[ExecEvent]:
        sandbox = self._running()  # here, not in the generator: a missing workspace fails at once
        code, stdout, stderr = self.provider.handler(sandbox, request)

        def events() -> Iterator[ExecEvent]:
            if stdout:
                yield Output("stdout", stdout)
            if stderr:
                yield Output("stderr", stderr)
            yield Exit(exit_code=code, timed_out=False, duration_ms=0)

        return events()

    # Files

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        files = self._running().files
        if path in files:
            return FileStat(size=len(files[path]), mode=0o644)
        prefix = path.rstrip("/") + "/"
        names = {name.removeprefix(prefix).split("/")[0] for name in files if name.startswith(prefix)}
        if not names:
            raise FileError("ENOENT", "No such file or directory", path)
        return [DirEntry(name=n, type="file", size=len(files.get(prefix + n, b"")), mode=0o644, mtime=0) for n in names]

    def read_file(self, path: str) -> tuple[FileStat, Iterator[bytes]]:
        found = self.stat(path)
        if isinstance(found, list):
            raise FileError("EISDIR", "Is a directory", path)
        return found, iter([self._running().files[path]])

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        content = b"".join(data)
        if len(content) != size:
            raise FileError("EINVAL", f"{len(content)} bytes sent, {size} announced", path)
        self._running().files[path] = content
        return size

    def read_archive(self, path: str) -> Iterator[bytes]:
        if not isinstance(self.stat(path), list):
            raise FileError("ENOTDIR", "Not a directory", path)
        buffer = io.BytesIO()
        prefix = path.rstrip("/") + "/"
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, content in self._running().files.items():
                if name.startswith(prefix):
                    info = tarfile.TarInfo(name.removeprefix(prefix))
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
        return iter([buffer.getvalue()])

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        files = self._running().files
        with tarfile.open(fileobj=io.BytesIO(b"".join(data)), mode="r") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files[f"{path.rstrip('/')}/{member.name.removeprefix('./')}"] = extracted.read()

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        raise BadRequest(f"the {self.provider.name} provider cannot watch files")

    def connect(self, port: int) -> PortConnection:
        raise BadRequest(f"the {self.provider.name} provider cannot reach ports inside a workspace")

    def processes(self) -> ProcessTable:
        raise BadRequest(
            f"the {self.provider.name} provider has no background processes: use exec, or another provider"
        )
