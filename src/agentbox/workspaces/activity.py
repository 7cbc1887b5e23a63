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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TypeVar

from agentbox.db.models import utcnow
from agentbox.sandbox.process_table import ProcessEvent, ProcessInfo, ProcessRequest, ProcessTable, TerminalSize
from agentbox.sandbox.runtime import (
    DirEntry,
    ExecEvent,
    ExecRequest,
    FileStat,
    PortConnection,
    Runtime,
    WatchEvent,
)

log = logging.getLogger("agentbox.workspaces.activity")

#: How often held workspaces are marked active: well under the shortest idle timeout (MIN_IDLE_SECONDS).
TOUCH_SECONDS = 0.5

T = TypeVar("T")
Hold = Callable[[], AbstractContextManager[None]]


class Activity:
    """This replica's calls in flight, per workspace; `touch(ids, at)` marks workspaces active."""

    def __init__(self, touch: Callable[[Sequence[str], datetime], None]) -> None:
        self._touch = touch
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, workspace_id: str) -> Iterator[None]:
        with self._lock:
            self._held[workspace_id] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agentbox-activity", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held[workspace_id] -= 1
                if not self._held[workspace_id]:
                    del self._held[workspace_id]

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def _run(self) -> None:
        while True:
            threading.Event().wait(TOUCH_SECONDS)
            with self._lock:
                held = list(self._held)
                if not held:
                    self._thread = None
                    return
            try:
                self._touch(held, utcnow())
            except Exception:  # the database away for a moment: the next touch
                log.exception("marking %d workspaces active failed", len(held))


def _held_stream(hold: Hold, stream: Callable[[], Iterator[T]]) -> Iterator[T]:
    """`stream()`, started at the call (so that its errors come at the call), held until it ends."""
    context = hold()
    context.__enter__()
    try:
        inner = stream()
    except BaseException:
        context.__exit__(None, None, None)
        raise
    return HeldIterator(inner, lambda: context.__exit__(None, None, None))


class HeldIterator(Iterator[T]):
    """An iterator that releases its hold when it ends, fails, is closed, or is dropped unread."""

    def __init__(self, inner: Iterator[T], release: Callable[[], object]) -> None:
        self._inner = inner
        self._release: Callable[[], object] | None = release

    def __next__(self) -> T:
        try:
            return next(self._inner)
        except BaseException:
            self._done()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._done()

    def __del__(self) -> None:
        self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class HeldConnection:
    """A port connection that holds its workspace until it is closed."""

    def __init__(self, inner: PortConnection, release: Callable[[], object]) -> None:
        self._inner = inner
        self._release: Callable[[], object] | None = release

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
            release, self._release = self._release, None
            if release is not None:
                release()

    def __del__(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class HeldProcessTable:
    """A process table whose every call, and every follower until closed, holds its workspace."""

    def __init__(self, inner: ProcessTable, hold: Hold) -> None:
        self._inner = inner
        self._hold = hold

    def start(self, request: ProcessRequest) -> ProcessInfo:
        with self._hold():
            return self._inner.start(request)

    def list(self) -> list[ProcessInfo]:
        with self._hold():
            return self._inner.list()

    def get(self, pid: int) -> ProcessInfo:
        with self._hold():
            return self._inner.get(pid)

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        return _held_stream(self._hold, lambda: self._inner.output(pid, offset, follow))

    def write_stdin(self, pid: int, data: Iterable[bytes]) -> int:
        with self._hold():
            return self._inner.write_stdin(pid, data)

    def close_stdin(self, pid: int) -> None:
        with self._hold():
            self._inner.close_stdin(pid)

    def signal(self, pid: int, signum: int) -> None:
        with self._hold():
            self._inner.signal(pid, signum)

    def resize(self, pid: int, size: TerminalSize) -> None:
        with self._hold():
            self._inner.resize(pid, size)


class HeldRuntime(Runtime):
    """`inner`, each call holding its workspace (`hold`) while it lasts."""

    def __init__(self, inner: Runtime, hold: Hold) -> None:
        self.inner = inner
        self._hold = hold

    def exec_stream(self, request: ExecRequest) -> Iterator[ExecEvent]:
        return _held_stream(self._hold, lambda: self.inner.exec_stream(request))

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        with self._hold():
            return self.inner.stat(path)

    def read_file(self, path: str) -> tuple[FileStat, Iterator[bytes]]:
        found: list[FileStat] = []

        def chunks() -> Iterator[bytes]:
            stat, inner = self.inner.read_file(path)
            found.append(stat)
            return inner

        stream = _held_stream(self._hold, chunks)
        return found[0], stream

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        with self._hold():
            return self.inner.write_file(path, data, size, mode)

    def read_archive(self, path: str) -> Iterator[bytes]:
        return _held_stream(self._hold, lambda: self.inner.read_archive(path))

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        with self._hold():
            self.inner.write_archive(path, data)

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        return _held_stream(self._hold, lambda: self.inner.watch(path, recursive))

    def connect(self, port: int) -> PortConnection:
        context = self._hold()
        context.__enter__()
        try:
            connection = self.inner.connect(port)
        except BaseException:
            context.__exit__(None, None, None)
            raise
        return HeldConnection(connection, lambda: context.__exit__(None, None, None))

    def processes(self) -> ProcessTable:
        return HeldProcessTable(self.inner.processes(), self._hold)
