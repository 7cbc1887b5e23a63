"""Workspaces as E2B sandboxes, through the official `e2b` SDK.

Where E2B is reached is the SDK's own business: `E2B_API_KEY` (given here), and the SDK's
environment variables `E2B_DOMAIN`, `E2B_API_URL` and `E2B_SANDBOX_URL` for anything but
E2B's cloud (the tests point the last two at a local stand-in).

How agentbox's model maps onto E2B's (docs in the README, "Providers"):
- `image` names an E2B template; the server's default image means `WORKSPACE_E2B_TEMPLATE`;
- cpu, memory and disk are the template's (E2B sets them when a template is built);
- the TTL becomes the sandbox's timeout, capped at E2B's maximum of 24 hours;
- stop and start are E2B's pause and resume;
- agentbox's ids travel in the sandbox's metadata, which is how `inventory` finds them;
- sandboxes are made closed to public traffic (E2B's `allow_public_traffic=False`): their ports
  answer at E2B's public URLs only to requests carrying the sandbox's traffic token, which
  agentbox never hands out. agentbox itself reaches ports through its helper over envd (`connect`),
  authenticated by the sandbox's envd access token the SDK sends, so it needs no public port.
"""

from __future__ import annotations

import contextlib
import posixpath
import queue
import shlex
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

import e2b
from e2b import CommandHandle, Sandbox, SandboxQuery, SandboxState, WatchHandle

from agentbox.errors import BadRequest, FileError, WorkspaceGone
from agentbox.providers.base import Capabilities, Provider, ProviderState, Resources, WorkspaceSpec
from agentbox.providers.e2b.commands import CommandTransport, install
from agentbox.providers.e2b.errors import e2b_errors
from agentbox.sandbox.channel import HelperChannel
from agentbox.sandbox.processes import HelperProcesses
from agentbox.sandbox.runtime import (
    TIMEOUT_EXIT_CODE,
    DirEntry,
    EntryType,
    ExecEvent,
    ExecRequest,
    Exit,
    FileStat,
    Output,
    WatchEvent,
    signal_of,
)
from agentbox.sandbox.tunnel import Tunnel

WORKSPACE_KEY = "agentbox.workspace.id"
INSTANCE_KEY = "agentbox.instance"
MAX_TIMEOUT = 24 * 3600  # E2B's longest sandbox lifetime, in seconds
RENEW_SLACK = 3600  # renew once an hour at most, not every round
_TYPES: dict[str, EntryType] = {"file": "file", "dir": "dir"}
WATCH_POLL_SECONDS = 0.1  # how often a watch asks envd for new events
WATCH_QUIET_SECONDS = 2.0  # a None after this long without any (Provider.watch)


@contextmanager
def _spooled(data: Iterable[bytes]) -> Iterator[tuple[IO[bytes], int]]:
    """`data` read here, in the caller's thread (the SDK uploads from threads of its own), and its size."""
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        size = 0
        for chunk in data:
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)
        yield spool, size


def _relayed(events: queue.Queue[ExecEvent | BaseException], handle: CommandHandle[Any]) -> Iterator[ExecEvent]:
    """The command's events as they arrive; closing early kills it."""
    finished = False
    try:
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                with e2b_errors("running the command"):
                    raise event
            yield event
            if isinstance(event, Exit):
                finished = True
                return
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                handle.kill()


def _watch_events(handle: WatchHandle, path: str) -> Iterator[WatchEvent | None]:
    quiet_since = time.monotonic()
    try:
        while True:
            with e2b_errors("watching the directory", path):
                events = handle.get_new_events()
            for event in events:
                yield WatchEvent(event.type.value, posixpath.join(path, event.name))
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= WATCH_QUIET_SECONDS:
                quiet_since = time.monotonic()
                yield None
            else:
                time.sleep(WATCH_POLL_SECONDS)
    finally:
        with contextlib.suppress(Exception):  # gone with its sandbox, or E2B is unreachable: nothing to stop
            handle.stop()


class E2BProvider(Provider):
    name = "e2b"

    def __init__(
        self, api_key: str, *, instance: str, default_image: str, template: str, public_traffic: bool = False
    ) -> None:
        self._opts: dict[str, Any] = {"api_key": api_key}
        self.public_traffic = public_traffic
        self.instance = instance
        self.default_image = default_image
        self.template = template
        self._connected: dict[str, Sandbox] = {}
        self._helpers: dict[str, str] = {}  # sandbox -> where agentbox's helper is in it
        self._lock = threading.Lock()

    def capabilities(self) -> Capabilities:
        return Capabilities(
            runtime="e2b",
            isolation="E2B sandbox (Firecracker microVM)",
            sized_per_request=False,
            network_policies=frozenset({"egress", "none"}),  # "none": the SDK's allow_internet_access=False
            processes=True,
            watch=True,
            ports=True,
        )

    def resources(self, ref: str) -> Resources:
        with e2b_errors("asking E2B about the sandbox"):
            info = Sandbox.get_info(ref, **self._opts)
        return Resources(cpu=info.cpu_count, memory=info.memory_mb << 20)  # the SDK does not report the disk

    def keep(self, ref: str, until: datetime | None) -> None:
        """Push E2B's timeout out again when the sandbox has less than a day left and its TTL has more."""
        now = datetime.now(UTC)
        wanted = MAX_TIMEOUT if until is None else min((until - now).total_seconds(), MAX_TIMEOUT)
        with e2b_errors("renewing the E2B sandbox's timeout"):
            info = Sandbox.get_info(ref, **self._opts)
            left = (info.end_at - now).total_seconds()
            if wanted - left > RENEW_SLACK:
                Sandbox.set_timeout(ref, int(wanted), **self._opts)

    # Lifecycle

    def create(self, spec: WorkspaceSpec) -> str:
        template = self.template if spec.image == self.default_image else spec.image
        timeout = MAX_TIMEOUT if spec.ttl_seconds is None else max(60, min(spec.ttl_seconds, MAX_TIMEOUT))
        metadata = {WORKSPACE_KEY: spec.id, INSTANCE_KEY: self.instance}
        with e2b_errors("creating the E2B sandbox"):
            sandbox = Sandbox.create(
                template=template,
                timeout=timeout,
                metadata=metadata,
                allow_internet_access=spec.network != "none",
                network={"allow_public_traffic": self.public_traffic},
                **self._opts,
            )
        with self._lock:
            self._connected[sandbox.sandbox_id] = sandbox
        return sandbox.sandbox_id

    def start(self, ref: str) -> None:
        with e2b_errors("resuming the E2B sandbox"):
            sandbox = Sandbox.connect(ref, **self._opts)  # resumes a paused sandbox
        with self._lock:
            self._connected[ref] = sandbox

    def stop(self, ref: str) -> None:
        with e2b_errors("pausing the E2B sandbox"):
            self._sandbox(ref).pause()
        with self._lock:
            self._connected.pop(ref, None)

    def destroy(self, ref: str) -> None:
        with self._lock:
            self._connected.pop(ref, None)
            self._helpers.pop(ref, None)
        with e2b_errors("removing the E2B sandbox"), contextlib.suppress(e2b.SandboxNotFoundException):
            Sandbox.kill(ref, **self._opts)

    def state(self, ref: str) -> ProviderState:
        try:
            with e2b_errors("asking E2B about the sandbox"):
                info = Sandbox.get_info(ref, **self._opts)
        except WorkspaceGone:
            return "missing"
        return "running" if info.state == SandboxState.RUNNING else "stopped"

    def inventory(self) -> dict[str, tuple[str, ProviderState]]:
        query = SandboxQuery(metadata={INSTANCE_KEY: self.instance}, state=[SandboxState.RUNNING, SandboxState.PAUSED])
        found: dict[str, tuple[str, ProviderState]] = {}
        with e2b_errors("listing E2B sandboxes"):
            pages = Sandbox.list(query=query, **self._opts)
            while pages.has_next:
                for sandbox in pages.next_items():
                    workspace_id = (sandbox.metadata or {}).get(WORKSPACE_KEY)
                    if workspace_id:
                        state: ProviderState = "running" if sandbox.state == SandboxState.RUNNING else "stopped"
                        found[workspace_id] = (sandbox.sandbox_id, state)
        return found

    # Commands

    def exec_stream(self, ref: str, request: ExecRequest) -> Iterator[ExecEvent]:
        sandbox = self._sandbox(ref)
        events: queue.Queue[ExecEvent | BaseException] = queue.Queue()
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        with e2b_errors("running the command"):
            handle = sandbox.commands.run(
                shlex.join(request.argv),
                background=True,
                envs=request.env,
                cwd=request.cwd,
                timeout=request.timeout or 0,
                retain_output=False,  # the output arrives through the callbacks; never keep a flood twice
            )

        def wait() -> None:
            try:
                result = handle.wait(
                    on_stdout=lambda text: events.put(Output("stdout", text.encode())),
                    on_stderr=lambda text: events.put(Output("stderr", text.encode())),
                )
                events.put(Exit(result.exit_code, False, elapsed()))
            except e2b.CommandExitException as exc:
                # 124 at the deadline: envd's own kill beat the SDK's clock (timeout(1)'s convention).
                late = request.timeout is not None and elapsed() >= request.timeout * 1000
                timed_out = exc.exit_code == TIMEOUT_EXIT_CODE and late
                events.put(Exit(exc.exit_code, timed_out, elapsed(), None if timed_out else signal_of(exc.exit_code)))
            except e2b.TimeoutException:
                events.put(Exit(TIMEOUT_EXIT_CODE, True, elapsed()))
            except BaseException as exc:
                events.put(exc)

        threading.Thread(target=wait, name="agentbox-e2b-exec", daemon=True).start()
        # Everything above ran now, not on the first read: a missing sandbox fails the call itself.
        return _relayed(events, handle)

    # Files

    def stat(self, ref: str, path: str) -> FileStat | list[DirEntry]:
        sandbox = self._sandbox(ref)
        with e2b_errors("reading file information", path):
            info = sandbox.files.get_info(path)
            if info.type is not None and info.type.value == "dir":
                return [
                    DirEntry(
                        entry.name,
                        _TYPES.get(entry.type.value if entry.type else "", "other"),
                        entry.size,
                        entry.mode,
                        int(entry.modified_time.timestamp()),
                    )
                    for entry in sandbox.files.list(path)
                ]
        return FileStat(size=info.size, mode=info.mode)

    def read_file(self, ref: str, path: str) -> tuple[FileStat, Iterator[bytes]]:
        found = self.stat(ref, path)
        if isinstance(found, list):
            raise FileError("EISDIR", "is a directory", path)
        with e2b_errors("reading the file", path):
            data = bytes(self._sandbox(ref).files.read(path, format="bytes"))
        return found, iter([data])

    def write_file(self, ref: str, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        """Upload next to `path`, then move it into place: all of it or nothing."""
        partial = f"{path}.agentbox-{uuid.uuid4().hex[:8]}"
        with _spooled(data) as (upload, written):
            if written != size:
                raise BadRequest(f"{path}: got {written} bytes of the {size} announced; nothing was written")
            with e2b_errors("writing the file", path):
                self._sandbox(ref).files.write(partial, upload)
        quoted = shlex.quote(partial)
        self._run(ref, f"chmod {mode:o} {quoted} && mv -f {quoted} {shlex.quote(path)}")
        return written

    def read_archive(self, ref: str, path: str) -> Iterator[bytes]:
        archive = f"/tmp/.agentbox-{uuid.uuid4().hex[:8]}.tar"
        self._run(ref, f"tar -C {shlex.quote(path)} -cf {archive} .")
        try:
            with e2b_errors("reading the archive", path):
                data = bytes(self._sandbox(ref).files.read(archive, format="bytes"))
        finally:
            self._run(ref, f"rm -f {archive}")
        return iter([data])

    def write_archive(self, ref: str, path: str, data: Iterable[bytes]) -> None:
        archive = f"/tmp/.agentbox-{uuid.uuid4().hex[:8]}.tar"
        with _spooled(data) as (upload, _), e2b_errors("uploading the archive", path):
            self._sandbox(ref).files.write(archive, upload)
        try:
            self._run(ref, f"mkdir -p {shlex.quote(path)} && tar -C {shlex.quote(path)} -xf {archive}")
        finally:
            self._run(ref, f"rm -f {archive}")

    def processes(self, ref: str) -> HelperProcesses:
        """agentbox's own process table, kept by its helper in the sandbox (see commands.py)."""
        return HelperProcesses(self._helper(ref))

    def connect(self, ref: str, port: int) -> Tunnel:
        """Through agentbox's helper too: the same path as on Docker, and it needs no public port."""
        return HelperChannel(self._helper(ref)).connect(port)

    def watch(self, ref: str, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        """Through envd's watcher, which keeps the events until asked (the SDK's `watch_dir`)."""
        with e2b_errors("watching the directory", path):
            handle = self._sandbox(ref).files.watch_dir(path, recursive=recursive)
        return _watch_events(handle, path)

    # Helpers

    def _helper(self, ref: str) -> CommandTransport:
        """agentbox's helper in the sandbox, installed on first use."""
        sandbox = self._sandbox(ref)
        with self._lock:
            helper = self._helpers.get(ref)
        if helper is None:
            helper = install(sandbox)
            with self._lock:
                self._helpers[ref] = helper
        return CommandTransport(sandbox, helper)

    def _sandbox(self, ref: str) -> Sandbox:
        with self._lock:
            sandbox = self._connected.get(ref)
        if sandbox is None:
            with e2b_errors("connecting to the E2B sandbox"):
                sandbox = Sandbox.connect(ref, **self._opts)
            with self._lock:
                self._connected[ref] = sandbox
        return sandbox

    def _run(self, ref: str, script: str) -> None:
        """A housekeeping command; its failure is the caller's error, with what it said."""
        with e2b_errors("running a file command"):
            try:
                self._sandbox(ref).commands.run(script, timeout=300)
            except e2b.CommandExitException as exc:
                raise BadRequest(f"{(exc.stderr or exc.stdout).strip()[-300:]}") from None
