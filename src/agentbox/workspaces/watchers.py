"""Directory watchers that outlive the call and the replica that made them (E2B's CreateWatcher).

A watcher is a watch running as a background process in its workspace (agentbox.sandbox.watchers),
so its events wait there, in its output; the database keeps only where they were read up to
(table `watch_cursors`), so any replica hands out the next ones and none twice: taking them is one
guarded UPDATE from the offset read to the offset after them. A watcher ends when it is removed,
when its directory goes, or with its workspace's processes (a stop or a delete).
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.sql.elements import ColumnElement

from agentbox.db.models import WatchCursor, Workspace
from agentbox.db.store import LIVE, Store
from agentbox.errors import Conflict, NotFound
from agentbox.sandbox.process_table import ProcessEnded, ProcessOutput, ProcessTable
from agentbox.sandbox.runtime import WatchEvent, close_stream
from agentbox.sandbox.watchers import MAX_RECORDS, READY, events_after, start_watch

#: How long taking events waits for a first one when there is none yet: what the caller just
#: changed may still be on its way through the sandbox (a few ms).
ARRIVING = 0.1
#: Then it takes the events that keep coming until none has for QUIET seconds, SETTLING at most:
#: one change is several events, a few ms apart (a directory, then what is in it).
QUIET = 0.03
SETTLING = 0.3
#: Bytes of a watch's output read per look (about 16,000 events of short paths).
MAX_TAKE = 1 << 20


@dataclass(frozen=True)
class WatchBatch:
    """Events taken from a watcher: under `root`, in order; `ended` once its watch has ended (its
    directory went, or its workspace stopped) and nothing more will come."""

    root: str
    events: list[WatchEvent]
    ended: bool


class Watchers:
    """The watchers of every workspace, in the store. Their methods block (they call into the sandbox)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, table: ProcessTable, workspace_id: str, path: str, recursive: bool) -> int:
        """Watch the directory `path`; the watcher's id (its watch's PID), once every change made from
        now on is seen. FileError when `path` is missing or not a directory."""
        pid = start_watch(table, path, recursive)
        with self.store.session() as session:
            session.execute(delete(WatchCursor).where(_row(workspace_id, pid)))  # an earlier process's PID
            session.add(WatchCursor(workspace_id=workspace_id, pid=pid, path=path, read_to=len(READY)))
        return pid

    def take(self, table: ProcessTable, workspace_id: str, pid: int) -> WatchBatch:
        """The events not yet taken: waiting ARRIVING for a first, then until they pause (QUIET,
        SETTLING at most). NotFound for an id that names no watcher of this workspace."""
        cursor = self._cursor(workspace_id, pid)
        events: list[WatchEvent] = []
        offset, ended = cursor.read_to, False
        now = time.monotonic()
        first_by, settled_by = now + ARRIVING, now + SETTLING
        while True:
            got, offset, ended = _read(table, pid, offset, MAX_RECORDS - len(events))
            events += got
            now = time.monotonic()
            full = len(events) >= MAX_RECORDS
            if ended or full or now >= settled_by or (events and not got) or (not events and now >= first_by):
                break
            time.sleep(QUIET)
        if offset == cursor.read_to:  # nothing taken: no write (the SDK asks every 100 ms)
            return WatchBatch(root=cursor.path, events=[], ended=ended)
        with self.store.session() as session:
            moved = session.execute(
                update(WatchCursor)
                .where(_row(workspace_id, pid), WatchCursor.read_to == cursor.read_to)
                .values(read_to=offset)
                .returning(WatchCursor.pid)
            ).first()
        if moved is None:  # another call took these meanwhile, through this replica or another
            events = []
        return WatchBatch(root=cursor.path, events=events, ended=ended)

    def remove(self, table: ProcessTable, workspace_id: str, pid: int) -> None:
        """End the watcher. NotFound for an id that names no watcher of this workspace."""
        self._cursor(workspace_id, pid)
        with contextlib.suppress(Conflict, NotFound):  # its watch ended already
            table.signal(pid, signal.SIGKILL)
        self.forget(workspace_id, pid)

    def forget(self, workspace_id: str, pid: int | None = None) -> None:
        """Drop a watcher's row (without `pid`: every one of a workspace whose processes ended)."""
        where = WatchCursor.workspace_id == workspace_id if pid is None else _row(workspace_id, pid)
        with self.store.session() as session:
            session.execute(delete(WatchCursor).where(where))

    def sweep(self) -> None:
        """Drop the rows of workspaces that are gone."""
        live = select(Workspace.id).where(Workspace.status.in_(LIVE))
        with self.store.session() as session:
            session.execute(delete(WatchCursor).where(WatchCursor.workspace_id.not_in(live)))

    def _cursor(self, workspace_id: str, pid: int) -> WatchCursor:
        with self.store.session() as session:
            cursor = session.get(WatchCursor, (workspace_id, pid))
        if cursor is None:
            raise NotFound(f"watcher {pid} not found: it was removed, or its workspace stopped since")
        return cursor


def _read(table: ProcessTable, pid: int, offset: int, limit: int) -> tuple[list[WatchEvent], int, bool]:
    """The whole events in the watch's output after `offset` (`limit` records at most), the offset after
    them, and whether it has ended."""
    data = bytearray()
    start, ended = offset, False
    output = table.output(pid, offset)
    try:
        for event in output:
            if isinstance(event, ProcessOutput):
                if not data:
                    start = event.offset  # after output dropped (over KEPT_OUTPUT): on from what is kept
                data += event.data
                if len(data) >= MAX_TAKE:
                    break
            ended = isinstance(event, ProcessEnded)
    finally:
        close_stream(output)
    events, used = events_after(bytes(data), limit)
    return events, start + used if data else offset, ended and b"\0" not in data[used:]


def _row(workspace_id: str, pid: int) -> ColumnElement[bool]:
    return (WatchCursor.workspace_id == workspace_id) & (WatchCursor.pid == pid)
