"""One running workspace as the core hands it out: commands, files, tools, processes, sessions, ports.

`WorkspaceManager.use` (a use: it slides an ephemeral workspace's expiry) or `.look` (a look: it
does not) proves the caller owns a running workspace and returns a `WorkspaceHandle`; every call
on it goes to the workspace's runtime (`Provider.runtime`), which alone knows how a command or a
file reaches the sandbox, and the provider says what that runtime can do (`capabilities`). Like
docker-py's resource objects it is plain: a row, a provider, a runtime. It checks nothing again:
a workspace stopped since the handle was made is its runtime's error (502/410).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from agentbox.config import Settings
from agentbox.db.models import Workspace
from agentbox.errors import BadRequest, FileError, Unprocessable
from agentbox.providers.base import Provider
from agentbox.sandbox.process_table import ProcessInfo, ProcessRequest, ProcessTable
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
from agentbox.wire.domain import Command
from agentbox.workspaces import listening, search, tools
from agentbox.workspaces.sessions import SessionRun, ShellSessions
from agentbox.workspaces.watchers import WatchBatch, Watchers

#: Seconds a shell session's command runs before it is interrupted, when it names no timeout.
SESSION_TIMEOUT = 120.0


@dataclass(frozen=True)
class WorkspaceHandle:
    """A running workspace of `owner` (its row when the handle was made), the provider that runs it
    and the runtime that reaches inside it.

    Every method blocks (it waits for the sandbox) and raises what its runtime raises (`Runtime`):
    FileError (404, 403, ...) for a path, ProviderError (502) when the sandbox cannot be reached or
    has stopped since (WorkspaceGone, 410, when it is gone); BadRequest (400) for what the provider
    cannot do at all.
    """

    workspace: Workspace
    provider: Provider
    ref: str
    runtime: Runtime
    settings: Settings
    sessions: ShellSessions
    watchers: Watchers

    @property
    def id(self) -> str:
        return self.workspace.id

    # Commands

    def exec(self, command: Command) -> ExecResult:
        """Run `command` to its end; its output capped at WORKSPACE_EXEC_OUTPUT_LIMIT per stream."""
        return self.runtime.exec(self._exec_request(command))

    def exec_stream(self, command: Command) -> Iterator[ExecEvent]:
        """Run `command`, its output as it comes, then its exit."""
        return self.runtime.exec_stream(self._exec_request(command))

    def _exec_request(self, command: Command) -> ExecRequest:
        return ExecRequest(
            argv=command.argv,
            cwd=command.cwd,
            env={**self.workspace.env, **command.env},  # the workspace's env, then the command's own
            timeout=command.timeout or self.settings.exec_timeout,
            output_limit=self.settings.exec_output_limit,
        )

    # Files

    def stat(self, path: str) -> FileStat | list[DirEntry]:
        return self.runtime.stat(path)

    def read(self, path: str) -> tuple[FileStat, Iterator[bytes]] | list[DirEntry]:
        """A file (stat and bytes) or a directory's entries."""
        return self.runtime.read(path)

    def write_file(self, path: str, data: Iterable[bytes], size: int, mode: int = 0o644) -> int:
        """Write exactly `size` bytes to `path` (atomically); the bytes written."""
        return self.runtime.write_file(path, data, size, mode)

    def read_archive(self, path: str) -> Iterator[bytes]:
        """`path` as a tar archive, in pieces."""
        return self._archives().read_archive(path)

    def write_archive(self, path: str, data: Iterable[bytes]) -> None:
        """Unpack a tar archive into the directory `path`."""
        self._archives().write_archive(path, data)

    def _archives(self) -> Runtime:
        if not self.provider.capabilities().archives:
            raise BadRequest("this workspace's provider cannot move tar archives: use the files endpoint per file")
        return self.runtime

    def watch(self, path: str, recursive: bool) -> Iterator[WatchEvent | None]:
        """File system events under `path` as they happen (None: nothing for a while, a keep-alive)."""
        if not self.provider.capabilities().watch:
            raise BadRequest(f"this workspace's provider ({self.provider.name}) cannot watch files")
        return self.runtime.watch(path, recursive)

    def create_watcher(self, path: str, recursive: bool) -> int:
        """A watcher of the directory `path` that outlives this call (and this replica): its id, once every
        change made from now on is seen. FileError (404, 400) when `path` is missing or not a directory."""
        return self.watchers.create(self.processes(), self.id, path, recursive)

    def watcher_events(self, watcher: int) -> WatchBatch:
        """What the watcher saw since its events were last taken. NotFound (404) for an unknown watcher."""
        return self.watchers.take(self.processes(), self.id, watcher)

    def remove_watcher(self, watcher: int) -> None:
        """End the watcher. NotFound (404) for an unknown watcher."""
        self.watchers.remove(self.processes(), self.id, watcher)

    # The agent's file tools

    def read_tool(self, path: str, offset: int, limit: int) -> tools.ReadResult:
        """The read tool: a file's lines, numbered, or a directory's listing."""
        found = self.read(path)
        if isinstance(found, list):
            return tools.listing(found)
        return tools.numbered(tools.whole(path, *found), offset, limit)

    def edit_tool(self, path: str, old: str, new: str, replace_all: bool) -> int:
        """The edit tool: replace `old` with `new` in a text file; how many times. Its mode is kept."""
        stat, chunks = self.runtime.read_file(path)
        data = tools.whole(path, stat, chunks)
        if tools.is_binary(data):
            raise Unprocessable(f"{path} is a binary file: the edit tool changes text; write the file whole instead")
        text, count = tools.replaced(data.decode("utf-8"), old, new, replace_all)
        encoded = text.encode()
        self.runtime.write_file(path, [encoded], len(encoded), stat.mode)
        return count

    def glob_tool(self, pattern: str, root: str, limit: int) -> search.GlobResult:
        """The glob tool: files under `root` matching `pattern`, newest first."""
        listing = self.runtime.exec(self._search_request(search.glob_command(pattern, root)))
        return search.globbed(pattern, root, listing, limit)

    def grep_tool(self, query: search.GrepQuery) -> search.GrepResult:
        """The grep tool: lines matching a regular expression, with context, until a bound."""
        return search.grep(query, lambda argv: self.runtime.exec_stream(self._search_request(argv)))

    def _search_request(self, argv: list[str]) -> ExecRequest:
        timeout = min(search.SEARCH_SECONDS, self.settings.exec_timeout)
        return ExecRequest(argv=argv, cwd="/", timeout=timeout, output_limit=search.SEARCH_OUTPUT)

    # Background processes

    def processes(self) -> ProcessTable:
        """Its background processes."""
        if not self.provider.capabilities().processes:
            raise BadRequest(
                f"the {self.workspace.provider} provider has no background processes: use exec, or a workspace "
                "of the gvisor or docker provider"
            )
        return self.runtime.processes()

    def start_process(self, request: ProcessRequest) -> ProcessInfo:
        env = {**self.workspace.env, **request.env}  # the workspace's env, then the process's own
        return self.processes().start(replace(request, env=env))

    # Shell sessions

    def open_session(self, cwd: str, env: Mapping[str, str]) -> ProcessInfo:
        return self.sessions.open(self.processes(), self.id, cwd, {**self.workspace.env, **env})

    def list_sessions(self) -> list[ProcessInfo]:
        return self.sessions.list(self.processes())

    def run_in_session(self, session: int, command: str, timeout: float | None) -> SessionRun:
        """Run a command in a session; it is interrupted after `timeout` (None: SESSION_TIMEOUT, at most
        the server's WORKSPACE_EXEC_TIMEOUT). Conflict (409) while the session runs another."""
        wait = min(timeout or SESSION_TIMEOUT, self.settings.exec_timeout)
        return self.sessions.run(self.processes(), self.id, session, command, wait, self.settings.exec_output_limit)

    def close_session(self, session: int) -> None:
        self.sessions.close(self.processes(), self.id, session)

    # Ports

    def connect(self, port: int) -> PortConnection:
        """A connection to `port` on the workspace's loopback (a preview). ProviderError (502) when
        nothing listens there."""
        if not self.provider.capabilities().ports:
            raise BadRequest(
                f"the {self.provider.name} provider cannot reach ports inside its workspaces: use a gvisor, docker "
                "or e2b workspace for previews"
            )
        return self.runtime.connect(port)

    def listening_ports(self) -> list[int]:
        """The TCP ports something listens on in the workspace (any address), ascending."""
        found: set[int] = set()
        for table in listening.TABLES:
            try:
                stat, chunks = self.runtime.read_file(table)
            except FileError as exc:
                if exc.status_code == 404:  # a kernel without IPv6
                    continue
                raise
            found |= listening.listening_ports(listening.table_text(table, stat.size, chunks))
        return sorted(found - self.provider.reserved_ports(self.ref))
