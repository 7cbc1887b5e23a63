"""A directory watch kept as a background process, so that it outlives the call that made it.

The helper's own `watch` (watch.c) runs under the process table (`ProcessRequest.helper_subcommand`):
its events are that process's output, kept in the sandbox like any other, and read by offset by
whoever asks next (agentbox.workspaces.watchers keeps the offset). Its output is what the helper
says on a `watch` call: "W" once the watch is in place, then NUL-ended events, an empty one every
2 s of quiet; or one "E <ERRNO> <why>" line when it cannot watch.
"""

from __future__ import annotations

import signal
import time

from agentbox.errors import ProviderError
from agentbox.sandbox.channel import MAX_WATCH_RECORD, raise_helper_error, watch_events
from agentbox.sandbox.process_table import ProcessEnded, ProcessOutput, ProcessRequest, ProcessTable
from agentbox.sandbox.runtime import WatchEvent, close_stream

#: What a watch says once it is in place; its events start after it.
READY = b"W\0"
#: Seconds a new watch has to be in place (a whole tree is walked first when recursive).
READY_SECONDS = 30.0
#: The tag of a watch's process in the table.
TAG = "agentbox-watch"
#: Records handed out by one read at most: what the workload writes into its watch's output (it can)
#: costs the server a bounded amount, the rest waits for the next read.
MAX_RECORDS = 10_000


def start_watch(table: ProcessTable, path: str, recursive: bool) -> int:
    """Watch the directory `path` (and, `recursive`, those under it); its PID once the watch is in
    place, so that every change made after this returns is seen.

    Raises FileError when `path` is missing or not a directory, ProviderError when the watch does
    not come up within READY_SECONDS, and what the table raises."""
    argv = ["watch", path, *(["-r"] if recursive else [])]
    pid = table.start(ProcessRequest(argv=argv, cwd="/", tag=TAG, helper_subcommand=True)).pid
    said = bytearray()
    ended = False
    given_up = time.monotonic() + READY_SECONDS
    events = table.output(pid, 0, follow=True)
    try:
        for event in events:
            if isinstance(event, ProcessOutput):
                said += event.data
            ended = isinstance(event, ProcessEnded)
            if said.startswith(READY) or ended or len(said) > MAX_WATCH_RECORD or time.monotonic() > given_up:
                break
    finally:
        close_stream(events)
    if said.startswith(READY):
        return pid
    if not ended:
        table.signal(pid, signal.SIGKILL)
        raise ProviderError(f"watching {path} did not start within {READY_SECONDS:.0f} s: try again")
    raise_helper_error(bytes(said).strip(), path)


def events_after(data: bytes, limit: int = MAX_RECORDS) -> tuple[list[WatchEvent], int]:
    """The whole events in `data` (a watch's output from just after a record's end), at most `limit`
    records' worth, and how many of its bytes they took: a record the watch is still writing, and
    what is past the limit, are left for the next read. A record over MAX_WATCH_RECORD is skipped
    (the helper never writes one; the workload may have)."""
    records: list[bytes] = []
    used = 0
    while len(records) < limit:
        end = data.find(b"\0", used)
        if end < 0:
            if len(data) - used > MAX_WATCH_RECORD:
                used = len(data)
            break
        record, used = data[used:end], end + 1
        if len(record) <= MAX_WATCH_RECORD:
            records.append(record)
    return [event for event in watch_events(iter(records)) if event is not None], used
