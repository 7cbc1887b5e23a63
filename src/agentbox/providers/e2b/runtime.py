"""What reaches inside an E2B sandbox (its `Runtime`): the SDK for commands, files, archives and
watches, and agentbox's own helper over E2B's commands (commands.py) for background processes and
port connections, so that those behave as on every other provider.

The E2B provider (provider.py) is the deployment: it makes, pauses, resumes and removes sandboxes,
and keeps the SDK's connection to each; a runtime asks it for that connection at every call, so
that making one reaches nothing and a sandbox gone since fails the call itself.
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import e2b
from e2b import CommandHandle, Sandbox, WatchHandle

from agentbox.errors import BadRequest, FileError
from agentbox.providers.e2b.commands import CommandTransport
from agentbox.providers.e2b.errors import e2b_errors
from agentbox.sandbox.channel import HelperChannel
from agentbox.sandbox.process_table import ProcessTable
from agentbox.sandbox.runtime import (
    TIMEOUT_EXIT_CODE,
    DirEntry,
    EntryType,
    ExecEvent,
    ExecRequest,
    Exit,
    FileStat,
    Output,
    Runtime,
    WatchEvent,
    signal_of,
)
from agentbox.sandbox.tunnel import Tunnel

_TYPES: dict[str, EntryType] = {"file": "file", "dir": "dir"}
WATCH_POLL_SECONDS = 0.1  # how often a watch asks envd for new events
WATCH_QUIET_SECONDS = 2.0  # a None after this long without any (Runtime.watch)


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


class E2BRuntime(Runtime):
    """One E2B sandbox from inside. `sandbox()` gives the SDK's connection to it (connecting when the
    provider holds none); `helper()` the way to agentbox's helper in it, installed on first use."""

    def __init__(self, sandbox: Callable[[], Sandbox], helper: Callable[[], CommandTransport]) -> None:
        self._sandbox = sandbox
        self._helper = helper

    def exec_stream(self, request: ExecRequest) -> Iterator[ExecEvent]:
        sandbox = self._sandbox()
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

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        sandbox = self._sandbox()
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

    def read_file(self, path: str) -> tuple[FileStat, Iterator[bytes]]:
        found = self.stat(path)
        if isinstance(found, list):
            raise FileError("EISDIR", "is a directory", path)
        with e2b_errors("reading the file", path):
            data = bytes(self._sandbox().files.read(path, format="bytes"))
        return found, iter([data])

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        """Upload next to `path`, then move it into place: all of it or nothing."""
        partial = f"{path}.agentbox-{uuid.uuid4().hex[:8]}"
        with _spooled(data) as (upload, written):
            if written != size:
                raise BadRequest(f"{path}: got {written} bytes of the {size} announced; nothing was written")
            with e2b_errors("writing the file", path):
                self._sandbox().files.write(partial, upload)
        quoted = shlex.quote(partial)
        self._run(f"chmod {mode:o} {quoted} && mv -f {quoted} {shlex.quote(path)}")
        return written

    def read_archive(self, path: str) -> Iterator[bytes]:
        archive = f"/tmp/.agentbox-{uuid.uuid4().hex[:8]}.tar"
        self._run(f"tar -C {shlex.quote(path)} -cf {archive} .")
        try:
            with e2b_errors("reading the archive", path):
                data = bytes(self._sandbox().files.read(archive, format="bytes"))
        finally:
            self._run(f"rm -f {archive}")
        return iter([data])

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        archive = f"/tmp/.agentbox-{uuid.uuid4().hex[:8]}.tar"
        with _spooled(data) as (upload, _), e2b_errors("uploading the archive", path):
            self._sandbox().files.write(archive, upload)
        try:
            self._run(f"mkdir -p {shlex.quote(path)} && tar -C {shlex.quote(path)} -xf {archive}")
        finally:
            self._run(f"rm -f {archive}")

    def processes(self) -> ProcessTable:
        """agentbox's own process table, kept by its helper in the sandbox (see commands.py)."""
        return self._channel().processes()

    def connect(self, port: int) -> Tunnel:
        """Through agentbox's helper too: the same path as on Docker, and it needs no public port."""
        return self._channel().connect(port)

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        """Through envd's watcher, which keeps the events until asked (the SDK's `watch_dir`)."""
        with e2b_errors("watching the directory", path):
            handle = self._sandbox().files.watch_dir(path, recursive=recursive)
        return _watch_events(handle, path)

    def _channel(self) -> HelperChannel:
        """agentbox's helper in the sandbox (installed on first use), over E2B's commands."""
        return HelperChannel(self._helper())

    def _run(self, script: str) -> None:
        """A housekeeping command; its failure is the caller's error, with what it said."""
        with e2b_errors("running a file command"):
            try:
                self._sandbox().commands.run(script, timeout=300)
            except e2b.CommandExitException as exc:
                raise BadRequest(f"{(exc.stderr or exc.stdout).strip()[-300:]}") from None
