"""envd's Filesystem service (`/filesystem.Filesystem/*`) over commands and watches in the workspace.

What envd reports of a path (owner, group, permission string, symlink target) comes from one
find(1) in the sandbox, which every image has; make_dir, move and remove are coreutils calls.
Watchers made by CreateWatcher live in the workspace, and where their events were read up to in
the database (agentbox.workspaces.watchers): any replica answers for them, until they are removed
or their sandbox stops. A watcher's id is its watch's PID, and whether its events carry entries.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
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


#: A watcher's id: its watch's PID, and "-entries" when its events carry the entry (include_entry).
_WATCHER_ID = re.compile(r"(\d{1,10})(-entries)?")


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


async def _directory(path: str) -> None:
    """What envd says of a watch of something that is not a directory, or not there."""
    if (await _stat(path)).type != F.FileType.DIRECTORY:
        raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} is not a directory: watch a directory")


async def _watch(path: str, recursive: bool, with_entries: bool) -> AsyncGenerator[F.FilesystemEvent | None, None]:
    """The watch's events as envd's (None while it is quiet, every few seconds), once it runs: errors
    (not a directory, no such path) are raised here, before any event."""
    target = envd.TARGET.get()
    await _directory(path)
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
                for each in await _seen(translate, event, with_entries):
                    yield each
    finally:
        await source.aclose()  # ends the watch in the sandbox


async def _seen(translate: _AsEnvdSees, event: WatchEvent, with_entries: bool) -> list[F.FilesystemEvent]:
    """One event from the sandbox as what envd reports (several, or none), with their entry if asked:
    one look per event from the sandbox, since envd's write is one event here and its parts arrive together."""
    seen = translate(event)
    if with_entries and seen and seen[-1].type != F.EventType.REMOVE:
        entry = await _entry_if_there(posixpath.join(translate.root, seen[-1].name))
        for each in seen:
            each.entry = entry
    return seen


class FilesystemService(filesystem_connect.Filesystem):
    """The service behind FilesystemASGIApplication (e2b.envd.filesystem.filesystem_connect.Filesystem)."""

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
        await _directory(path)
        pid = await call(lambda: target.use().create_watcher(path, request.recursive))
        return F.CreateWatcherResponse(watcher_id=f"{pid}{'-entries' if request.include_entry else ''}")

    async def get_watcher_events(
        self, request: F.GetWatcherEventsRequest, ctx: RequestContext[Any, Any]
    ) -> F.GetWatcherEventsResponse:
        target = envd.TARGET.get()
        pid, with_entries = _watcher(request.watcher_id)
        batch = await call(lambda: target.use().watcher_events(pid))
        translate = _AsEnvdSees(batch.root)
        seen: list[F.FilesystemEvent] = []
        for event in batch.events:
            seen += await _seen(translate, event, with_entries)
        return F.GetWatcherEventsResponse(events=seen)

    async def remove_watcher(
        self, request: F.RemoveWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> F.RemoveWatcherResponse:
        target = envd.TARGET.get()
        pid, _ = _watcher(request.watcher_id)
        await call(lambda: target.use().remove_watcher(pid))
        return F.RemoveWatcherResponse()


def _watcher(watcher_id: str) -> tuple[int, bool]:
    """A watcher's PID and whether its events carry entries, from its id."""
    parsed = _WATCHER_ID.fullmatch(watcher_id)
    if parsed is None:
        raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id[:100]} not found")
    return int(parsed[1]), parsed[2] is not None
