"""Calls in flight into workspaces: while one lasts, its workspace counts as active and is never suspended.

Idle suspend (idle.py) freezes a workspace that has had no activity for its idle timeout. A call is
activity when it starts (the manager writes `active_at`, to a fraction of the timeout), but a call
can last longer than that: a command that sleeps, an attached terminal, a follower, a preview's
websocket, a tunnel to a port. Such a call holds its workspace here for as long as it lasts, and a
thread writes `active_at` of every held workspace every TOUCH_SECONDS, one UPDATE for all of them,
so that the leader, on whichever replica, sees the activity. The thread runs only while something
is held.

`HeldRuntime` is how every call holds: the manager hands out runtimes wrapped in it, so each method
holds for its duration, and what outlives the call (an output stream, a connection, a process
table's follower) holds until it is closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

from agentbox.db.models import utcnow
from agentbox.sandbox.async_tunnel import AsyncPort, as_async
from agentbox.sandbox.process_table import ProcessEvent, ProcessInfo, ProcessRequest, ProcessTable, TerminalSize
from agentbox.sandbox.runtime import (
    DirEntry,
    ExecEvent,
    ExecRequest,
    ExecResult,
    FileStat,
    PortConnection,
    Runtime,
    WatchEvent,
)

log = logging.getLogger("agentbox.workspaces.activity")

#: How often held workspaces are marked active: well under the shortest idle timeout (MIN_IDLE_SECONDS).
TOUCH_SECONDS = 0.5

T = TypeVar("T")
#: Holds a workspace until the function it returns is called (more calls do nothing).
Acquire = Callable[[], Callable[[], None]]


class Activity:
    """This replica's calls in flight, per workspace; `touch(ids, at)` marks workspaces active."""

    def __init__(self, touch: Callable[[Sequence[str], datetime], None]) -> None:
        self._touch = touch
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def acquire(self, workspace_id: str) -> Callable[[], None]:
        """Hold the workspace; the function returned lets it go."""
        with self._lock:
            self._held[workspace_id] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agentbox-activity", daemon=True)
                self._thread.start()
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._held[workspace_id] -= 1
                if not self._held[workspace_id]:
                    del self._held[workspace_id]

        return release

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def _run(self) -> None:
        while True:
            time.sleep(TOUCH_SECONDS)
            with self._lock:
                held = list(self._held)
                if not held:
                    self._thread = None
                    return
            try:
                self._touch(held, utcnow())
            except Exception:  # the database away for a moment: the next touch
                log.exception("marking %d workspaces active failed", len(held))


def _kept() -> None:
    """The release of a hold handed on to another object."""


class HeldIterator(Iterator[T]):
    """An iterator that lets its workspace go when it ends, fails, is closed, or is dropped unread."""

    def __init__(self, inner: Iterator[T], release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def __next__(self) -> T:
        try:
            return next(self._inner)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._release()

    def __del__(self) -> None:
        self._release()


class HeldConnection:
    """A port connection that holds its workspace until it is closed (or dropped)."""

    def __init__(self, inner: PortConnection, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def read(self) -> bytes:
        return self._inner.read()

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def end_input(self) -> None:
        self._inner.end_input()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._release()

    def as_async(self) -> AsyncPort:
        """This connection for the event loop (`async_tunnel.as_async`), still holding its workspace."""
        port = HeldAsyncPort(as_async(self._inner), self._release)
        self._release = _kept  # the hold is the port's now: this object may be dropped
        return port

    def __del__(self) -> None:
        self._release()


class HeldAsyncPort:
    """A held connection taken over by the event loop (a preview, a relayed WebSocket): it holds its workspace
    until it is closed (or dropped)."""

    def __init__(self, inner: AsyncPort, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def read(self) -> bytes:
        return await self._inner.read()

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def end_input(self) -> None:
        await self._inner.end_input()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()

    def __del__(self) -> None:
        self._release()


class _Holding:
    """What the held runtime and process table share: holding for a call, and past it."""

    def __init__(self, acquire: Acquire) -> None:
        self._acquire = acquire

    @contextmanager
    def _held(self) -> Iterator[None]:
        release = self._acquire()
        try:
            yield
        finally:
            release()

    def _outliving(self, call: Callable[[], T], wrap: Callable[[T, Callable[[], None]], T]) -> T:
        """`call()`, held until what it returns is done with (`wrap` ties the release to it)."""
        release = self._acquire()
        try:
            return wrap(call(), release)
        except BaseException:
            release()
            raise

    def _stream(self, call: Callable[[], Iterator[T]]) -> Iterator[T]:
        return self._outliving(call, HeldIterator)


class HeldProcessTable(_Holding):
    """A process table whose every call, and every follower until closed, holds its workspace."""

    def __init__(self, inner: ProcessTable, acquire: Acquire) -> None:
        super().__init__(acquire)
        self._inner = inner

    def start(self, request: ProcessRequest) -> ProcessInfo:
        with self._held():
            return self._inner.start(request)

    def list(self) -> list[ProcessInfo]:
        with self._held():
            return self._inner.list()

    def get(self, pid: int) -> ProcessInfo:
        with self._held():
            return self._inner.get(pid)

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        return self._stream(lambda: self._inner.output(pid, offset, follow))

    def write_stdin(self, pid: int, data: Iterable[bytes]) -> int:
        with self._held():
            return self._inner.write_stdin(pid, data)

    def close_stdin(self, pid: int) -> None:
        with self._held():
            self._inner.close_stdin(pid)

    def signal(self, pid: int, signum: int) -> None:
        with self._held():
            self._inner.signal(pid, signum)

    def resize(self, pid: int, size: TerminalSize) -> None:
        with self._held():
            self._inner.resize(pid, size)


class HeldRuntime(_Holding, Runtime):
    """`inner`, each call holding its workspace while it lasts."""

    def __init__(self, inner: Runtime, acquire: Acquire) -> None:
        super().__init__(acquire)
        self.inner = inner

    def exec_stream(self, request: ExecRequest) -> Iterator[ExecEvent]:
        return self._stream(lambda: self.inner.exec_stream(request))

    # `exec` and `read` go to the inner runtime's own, which may do in one call what the base class does in two.

    def exec(self, request: ExecRequest) -> ExecResult:
        with self._held():
            return self.inner.exec(request)

    def read(self, path: str) -> tuple[FileStat, Iterator[bytes]] | list[DirEntry]:
        release = self._acquire()
        try:
            found = self.inner.read(path)
        except BaseException:
            release()
            raise
        if isinstance(found, list):
            release()
            return found
        return found[0], HeldIterator(found[1], release)

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        with self._held():
            return self.inner.stat(path)

    def read_file(self, path: str) -> tuple[FileStat, Iterator[bytes]]:
        return self._outliving(
            lambda: self.inner.read_file(path), lambda found, release: (found[0], HeldIterator(found[1], release))
        )

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        with self._held():
            return self.inner.write_file(path, data, size, mode)

    def read_archive(self, path: str) -> Iterator[bytes]:
        return self._stream(lambda: self.inner.read_archive(path))

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        with self._held():
            self.inner.write_archive(path, data)

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        return self._stream(lambda: self.inner.watch(path, recursive))

    def connect(self, port: int) -> PortConnection:
        return self._outliving(lambda: self.inner.connect(port), HeldConnection)

    def processes(self) -> ProcessTable:
        return HeldProcessTable(self.inner.processes(), self._acquire)
