"""Watchers that outlive their call: how a watch's output becomes events, and how replicas share where they were
read up to (on SQLite here), over a process table that keeps a watch's output in memory as the helper's would."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import pytest

from agentbox.db.models import Status
from agentbox.db.store import Store
from agentbox.errors import FileError, NotFound
from agentbox.sandbox.process_table import (
    ProcessEnded,
    ProcessEvent,
    ProcessInfo,
    ProcessOutput,
    ProcessRequest,
    TerminalSize,
)
from agentbox.sandbox.runtime import WatchEvent
from agentbox.sandbox.watchers import MAX_RECORDS, events_after
from agentbox.workspaces.watchers import Watchers
from tests.unit.test_store import make_workspace


class WatchTable:
    """One watch's process: its output is what `said` holds; `ended` once it has ended."""

    def __init__(self, said: bytes = b"W\0") -> None:
        self.said = bytearray(said)
        self.ended = False
        self.started: list[ProcessRequest] = []
        self.killed: list[int] = []

    def start(self, request: ProcessRequest) -> ProcessInfo:
        self.started.append(request)
        return ProcessInfo(41, request.argv, "/", request.tag, False, None, "running", datetime.now(UTC))

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        if self.said[offset:]:
            yield ProcessOutput("stdout", offset, bytes(self.said[offset:]))
        if self.ended:
            yield ProcessEnded(exit_code=0, signal=None, ended_at=None)

    def signal(self, pid: int, signum: int) -> None:
        self.killed.append(pid)
        self.ended = True

    def list(self) -> list[ProcessInfo]:
        raise NotImplementedError

    def get(self, pid: int) -> ProcessInfo:
        raise NotImplementedError

    def write_stdin(self, pid: int, data: Iterable[bytes]) -> int:
        raise NotImplementedError

    def close_stdin(self, pid: int) -> None:
        raise NotImplementedError

    def resize(self, pid: int, size: TerminalSize) -> None:
        raise NotImplementedError


def test_whole_events_are_taken_and_one_being_written_waits() -> None:
    data = b"create /w/a\0write /w/a\0\0remove /w/b\0chmod /w/par"
    events, used = events_after(data)
    assert events == [WatchEvent("create", "/w/a"), WatchEvent("write", "/w/a"), WatchEvent("remove", "/w/b")]
    assert data[used:] == b"chmod /w/par"  # the watch has not finished writing it
    assert events_after(b"no end yet") == ([], 0)
    # What the workload may have written into the watch's output: skipped, never a stall or an error.
    assert events_after(b"x" * (64 << 10)) == ([], 64 << 10)
    assert events_after(b"bogus\0create /w/c\0") == ([WatchEvent("create", "/w/c")], 18)


def test_the_watch_runs_as_the_helpers_own_subcommand_and_its_errors_are_the_paths(store: Store) -> None:
    table = WatchTable()
    _add(store, "ws-1")
    assert Watchers(store).create(table, "ws-1", "/w", recursive=True) == 41
    assert table.started[0].argv == ["watch", "/w", "-r"] and table.started[0].helper_subcommand
    missing = WatchTable(b"E ENOENT No such file or directory\n")
    missing.ended = True
    with pytest.raises(FileError) as raised:
        Watchers(store).create(missing, "ws-1", "/gone", recursive=False)
    assert raised.value.status_code == 404


def test_replicas_hand_out_each_event_once_in_order(store: Store) -> None:
    _add(store, "ws-1")
    one, two = Watchers(store), Watchers(store)  # two replicas on one database
    table = WatchTable()
    pid = one.create(table, "ws-1", "/w", recursive=False)
    table.said += b"create /w/a\0write /w/a\0"
    first = two.take(table, "ws-1", pid)
    assert (first.root, first.events, first.ended) == (
        "/w",
        [WatchEvent("create", "/w/a"), WatchEvent("write", "/w/a")],
        False,
    )
    table.said += b"remove /w/a\0rename /w/p"  # the second event is still being written
    assert one.take(table, "ws-1", pid).events == [WatchEvent("remove", "/w/a")]
    table.said += b"artial\0"
    assert two.take(table, "ws-1", pid).events == [WatchEvent("rename", "/w/partial")]
    assert one.take(table, "ws-1", pid).events == []


def test_a_removed_watcher_is_ended_and_gone_for_every_replica(store: Store) -> None:
    _add(store, "ws-1", "ws-2")
    table = WatchTable()
    pid = Watchers(store).create(table, "ws-1", "/w", recursive=False)
    with pytest.raises(NotFound):
        Watchers(store).take(table, "ws-2", pid)  # another workspace's id names nothing here
    Watchers(store).remove(table, "ws-1", pid)
    assert table.killed == [pid]
    with pytest.raises(NotFound):
        Watchers(store).take(table, "ws-1", pid)
    with pytest.raises(NotFound):
        Watchers(store).remove(table, "ws-1", pid)
    with pytest.raises(NotFound):
        Watchers(store).remove(table, "ws-1", 7)  # any other process's PID: not a watcher, nothing signalled
    assert table.killed == [pid]


def test_watchers_of_a_stopped_or_gone_workspace_are_forgotten(store: Store) -> None:
    _add(store, "ws-1", "ws-2")
    watchers = Watchers(store)
    for workspace in ("ws-1", "ws-2"):
        watchers.create(WatchTable(), workspace, "/w", recursive=False)
    watchers.forget("ws-1")  # its processes ended with a stop
    store.update("ws-2", "deleted", status=Status.DELETED.value)
    watchers.sweep()
    for workspace in ("ws-1", "ws-2"):
        with pytest.raises(NotFound):
            watchers.take(WatchTable(), workspace, 41)


def _add(store: Store, *workspaces: str) -> None:
    for workspace in workspaces:
        store.add(make_workspace(workspace), "created")


def test_two_replicas_taking_at_once_never_both_hand_out_an_event(store: Store) -> None:
    _add(store, "ws-1")
    one, two = Watchers(store), Watchers(store)
    table = WatchTable()
    pid = one.create(table, "ws-1", "/w", recursive=False)
    table.said += b"create /w/a\0"
    taken_by_two: list[WatchEvent] = []

    class Racing(WatchTable):
        def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
            if not taken_by_two:  # replica two takes the same events while replica one is reading them
                taken_by_two.extend(two.take(table, "ws-1", pid).events)
            return table.output(pid, offset, follow)

    assert one.take(Racing(), "ws-1", pid).events == []
    assert taken_by_two == [WatchEvent("create", "/w/a")]


def test_a_flood_the_workload_writes_into_its_watch_is_handed_out_in_bounded_batches(store: Store) -> None:
    _add(store, "ws-1")
    watchers = Watchers(store)
    table = WatchTable()
    pid = watchers.create(table, "ws-1", "/w", recursive=False)
    table.said += b"create /w/f\0" * (MAX_RECORDS * 2 + 5)  # what code in the sandbox can write there
    sizes = [len(watchers.take(table, "ws-1", pid).events) for _ in range(4)]
    assert sizes == [MAX_RECORDS, MAX_RECORDS, 5, 0]  # every event once, never more than a batch at a time
