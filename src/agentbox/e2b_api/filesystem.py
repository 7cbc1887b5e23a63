"""envd's Filesystem service (`/filesystem.Filesystem/*`) over commands and watches in the workspace.

What envd reports of a path (owner, group, permission string, symlink target) comes from one
find(1) in the sandbox, which every image has; make_dir, move and remove are coreutils calls.
Watchers made by CreateWatcher live in this server until removed (or their sandbox ends).
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_connect
from e2b.envd.filesystem import filesystem_pb as F
from protobuf.wkt import Timestamp

from agentbox.e2b_api import envd
from agentbox.e2b_api.rpc import call, drain, one_of
from agentbox.sandbox.runtime import ExecResult, WatchEvent
from agentbox.wire.domain import Command

#: What find prints per path: type (a link's target's), own type, size, mode, permissions, owner,
#: group, mtime, link text, path; each field NUL-terminated (paths may hold anything but NUL).
_FIELDS = 10
_FORMAT = "%Y\\0%y\\0%s\\0%m\\0%M\\0%u\\0%g\\0%T@\\0%l\\0%p\\0"
_TYPES = {"f": F.FileType.FILE, "d": F.FileType.DIRECTORY}
_EVENTS = {
    "create": F.EventType.CREATE,
    "write": F.EventType.WRITE,
    "remove": F.EventType.REMOVE,
    "rename": F.EventType.RENAME,
    "chmod": F.EventType.CHMOD,
}
#: Events a watcher keeps until they are asked for; older ones are dropped past this.
KEPT_EVENTS = 10_000


async def _run(argv: list[str]) -> ExecResult:
    target = envd.TARGET.get()
    command = Command(argv=argv, cwd="/", timeout=30)
    result: ExecResult = await call(lambda: target.use().exec(command))
    return result


def _failed(result: ExecResult, path: str) -> ConnectError:
    """find's, mkdir's, mv's or rm's complaint as the Connect code envd would give."""
    said = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit status {result.exit_code}"
    if "No such file" in said or "Not a directory" in said:
        return ConnectError(Code.NOT_FOUND, f"path {path} not found: {said}")
    if "Permission denied" in said or "Operation not permitted" in said or "Read-only" in said:
        return ConnectError(Code.PERMISSION_DENIED, f"{path}: {said}")
    return ConnectError(Code.INTERNAL, f"{path}: {said}")


async def _entries(path: str, depth: int = 0) -> list[F.EntryInfo]:
    """The entry of `path`, then (depth > 0) those under it down to `depth` levels, sorted by path."""
    result = await _run(["find", path, "-mindepth", "0", "-maxdepth", str(depth), "-printf", _FORMAT])
    fields = result.stdout.split("\0")
    rows = [fields[i : i + _FIELDS] for i in range(0, len(fields) - _FIELDS + 1, _FIELDS)]
    if result.exit_code != 0 and not rows:
        raise _failed(result, path)
    entries = [_entry(row) for row in rows]
    return entries[:1] + sorted(entries[1:], key=lambda e: e.path)


def _entry(row: list[str]) -> F.EntryInfo:
    kind, own_kind, size, mode, permissions, owner, group, mtime, link, path = row
    target = posixpath.normpath(posixpath.join(posixpath.dirname(path), link)) if own_kind == "l" else None
    return F.EntryInfo(
        name=posixpath.basename(path) or path,
        type=_TYPES.get(kind, F.FileType.UNSPECIFIED),
        path=path,
        size=int(size),
        mode=int(mode, 8),
        permissions=permissions,
        owner=owner,
        group=group,
        modified_time=Timestamp.from_datetime(datetime.fromtimestamp(float(mtime), UTC)),
        symlink_target=target,
        is_symlink=own_kind == "l",
    )


async def _stat(path: str) -> F.EntryInfo:
    return (await _entries(path))[0]


async def _entry_if_there(path: str) -> F.EntryInfo | None:
    """The entry of a path an event names, if it is still there (as envd: best effort)."""
    try:
        return await _stat(path)
    except ConnectError:
        return None


#: How long GetWatcherEvents waits for a first event when it has none: what a call that just changed
#: the directory caused is still on its way from the sandbox (a few ms).
ARRIVING = 0.1
#: Then it takes the events that keep coming until none has for QUIET seconds (at most SETTLING in
#: all): one change is several events, which may arrive a few ms apart (a directory, then what is in it).
QUIET = 0.03
SETTLING = 0.3


@dataclass
class _Watcher:
    """A CreateWatcher watcher: its events, kept until GetWatcherEvents takes them."""

    sandbox_id: str
    task: asyncio.Task[None] | None = None
    events: list[F.FilesystemEvent] = field(default_factory=list)
    error: ConnectError | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


#: The name of the temporary file agentbox writes a file into before renaming it over the file.
PUT_PREFIX = ".agentbox-put."
#: What envd reports for writing a file (made, written, its mode set): envd writes in place.
_WRITTEN = (F.EventType.CREATE, F.EventType.WRITE, F.EventType.CHMOD)


class _AsEnvdSees:
    """Watch events as envd's watcher reports them.

    agentbox writes a file whole or not at all: into a temporary file, renamed over the file. Code
    written for envd, which writes in place, waits for the file's own create and write: so the
    temporary file's events are left out, and the rename that lands it reads as envd's write.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.landing = False

    def __call__(self, event: WatchEvent) -> list[F.FilesystemEvent]:
        name = posixpath.relpath(event.path, self.root)
        if posixpath.basename(event.path).startswith(PUT_PREFIX):
            self.landing = self.landing or event.type == "rename"
            return []
        if self.landing and event.type == "rename":
            self.landing = False
            return [F.FilesystemEvent(name=name, type=kind) for kind in _WRITTEN]
        return [F.FilesystemEvent(name=name, type=_EVENTS[event.type])]


async def _watch(path: str, recursive: bool, with_entries: bool) -> AsyncGenerator[F.FilesystemEvent | None, None]:
    """The watch's events as envd's (None while it is quiet, every few seconds), once it runs: errors
    (not a directory, no such path) are raised here, before any event."""
    target = envd.TARGET.get()
    info = await _stat(path)
    if info.type != F.FileType.DIRECTORY:
        raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} is not a directory: watch a directory")
    events = await call(lambda: target.use().watch(path, recursive))
    return _translated(path, events, with_entries)


async def _translated(
    root: str, events: Iterator[WatchEvent | None], with_entries: bool
) -> AsyncGenerator[F.FilesystemEvent | None, None]:
    source = drain(events)
    translate = _AsEnvdSees(root)
    try:
        async for event in source:
            if event is None:
                yield None
            else:
                seen = translate(event)
                if with_entries and seen and seen[-1].type != F.EventType.REMOVE:
                    # One look per event from the sandbox, before any of what it reads as is handed on:
                    # envd's write is one event here, and its three parts arrive together.
                    entry = await _entry_if_there(posixpath.join(root, seen[-1].name))
                    for each in seen:
                        each.entry = entry
                for each in seen:
                    yield each
    finally:
        await source.aclose()  # ends the watch in the sandbox


class FilesystemService(filesystem_connect.Filesystem):
    """The service behind FilesystemASGIApplication (e2b.envd.filesystem.filesystem_connect.Filesystem)."""

    def __init__(self) -> None:
        self._watchers: dict[str, _Watcher] = {}

    async def stat(self, request: F.StatRequest, ctx: RequestContext[Any, Any]) -> F.StatResponse:
        return F.StatResponse(entry=await _stat(envd.TARGET.get().path(request.path)))

    async def list_dir(self, request: F.ListDirRequest, ctx: RequestContext[Any, Any]) -> F.ListDirResponse:
        path = envd.TARGET.get().path(request.path)
        entries = await _entries(path, max(request.depth, 1))
        if entries[0].type != F.FileType.DIRECTORY:
            raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} is not a directory: list a directory")
        return F.ListDirResponse(entries=entries[1:])

    async def make_dir(self, request: F.MakeDirRequest, ctx: RequestContext[Any, Any]) -> F.MakeDirResponse:
        path = envd.TARGET.get().path(request.path)
        result = await _run(["sh", "-c", 'test -e "$1" && exit 17; mkdir -p -- "$1"', "sh", path])
        if result.exit_code == 17:
            raise ConnectError(Code.ALREADY_EXISTS, f"path {path} already exists")
        if result.exit_code != 0:
            raise _failed(result, path)
        return F.MakeDirResponse(entry=await _stat(path))

    async def move(self, request: F.MoveRequest, ctx: RequestContext[Any, Any]) -> F.MoveResponse:
        target = envd.TARGET.get()
        source, destination = target.path(request.source), target.path(request.destination)
        script = 'mkdir -p -- "$(dirname -- "$2")" && mv -T -- "$1" "$2"'
        result = await _run(["sh", "-c", script, "sh", source, destination])
        if result.exit_code != 0:
            raise _failed(result, source)
        return F.MoveResponse(entry=await _stat(destination))

    async def remove(self, request: F.RemoveRequest, ctx: RequestContext[Any, Any]) -> F.RemoveResponse:
        path = envd.TARGET.get().path(request.path)
        result = await _run(["rm", "-rf", "--", path])  # a missing path is no error, as with envd
        if result.exit_code != 0:
            raise _failed(result, path)
        return F.RemoveResponse()

    async def watch_dir(
        self, request: F.WatchDirRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[F.WatchDirResponse]:
        path = envd.TARGET.get().path(request.path)
        events = await _watch(path, request.recursive, request.include_entry)
        try:
            yield F.WatchDirResponse(event=one_of("start", F.WatchDirResponse.StartEvent()))
            async for event in events:
                if event is None:
                    yield F.WatchDirResponse(event=one_of("keepalive", F.WatchDirResponse.KeepAlive()))
                else:
                    yield F.WatchDirResponse(event=one_of("filesystem", event))
        finally:
            await events.aclose()

    async def create_watcher(
        self, request: F.CreateWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> F.CreateWatcherResponse:
        target = envd.TARGET.get()
        path = target.path(request.path)
        events = await _watch(path, request.recursive, request.include_entry)
        watcher = _Watcher(target.id)
        watcher.task = asyncio.create_task(self._collect(watcher, events))
        watcher_id = secrets.token_hex(8)
        self._watchers[watcher_id] = watcher
        return F.CreateWatcherResponse(watcher_id=watcher_id)

    async def get_watcher_events(
        self, request: F.GetWatcherEventsRequest, ctx: RequestContext[Any, Any]
    ) -> F.GetWatcherEventsResponse:
        watcher = self._watcher(request.watcher_id)
        if watcher.error is not None and not watcher.events:
            self._watchers.pop(request.watcher_id, None)
            raise watcher.error
        settled = asyncio.get_running_loop().time() + SETTLING
        wait = QUIET if watcher.events else ARRIVING
        while watcher.error is None and asyncio.get_running_loop().time() < settled:
            watcher.arrived.clear()
            try:
                await asyncio.wait_for(watcher.arrived.wait(), wait)
            except TimeoutError:
                break
            wait = QUIET
        taken, watcher.events = watcher.events, []
        watcher.arrived.clear()
        return F.GetWatcherEventsResponse(events=taken)

    async def remove_watcher(
        self, request: F.RemoveWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> F.RemoveWatcherResponse:
        watcher = self._watcher(request.watcher_id)
        del self._watchers[request.watcher_id]
        if watcher.task is not None:
            watcher.task.cancel()
        return F.RemoveWatcherResponse()

    def _watcher(self, watcher_id: str) -> _Watcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None or watcher.sandbox_id != envd.TARGET.get().id:
            raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id} not found")
        return watcher

    @staticmethod
    async def _collect(watcher: _Watcher, events: AsyncGenerator[F.FilesystemEvent | None, None]) -> None:
        try:
            async for event in events:
                if event is not None:
                    watcher.events.append(event)
                    del watcher.events[:-KEPT_EVENTS]
                    watcher.arrived.set()
        except ConnectError as exc:
            watcher.error = exc
        finally:
            await events.aclose()
