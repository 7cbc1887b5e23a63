"""`agentbox ws` commands for background processes and terminals: spawn, ps, logs, kill, shell."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from agentbox.cli.common import KeyOption, UrlOption, api_client, console, errors, fail, guarded, request
from agentbox.cli.terminal import attach, terminal_size
from agentbox.client import ProcessOptions, TerminalSize
from agentbox.wire.processes import OutputDroppedEvent, ProcessExitEvent, ProcessOutputEvent

#: `ws shell`: a login bash where there is one, else sh.
LOGIN_SHELL = ["/bin/sh", "-c", "command -v bash >/dev/null && exec bash -l; exec sh -l"]

WorkspaceArgument = Annotated[str, typer.Argument(help="workspace id")]
PidArgument = Annotated[int, typer.Argument(help="the process's PID in the workspace (see `ws ps`)")]


def ws_spawn(
    workspace_id: WorkspaceArgument,
    command: Annotated[list[str], typer.Argument(help="command and arguments (after --)")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    tag: Annotated[str | None, typer.Option(help="your own name for it, shown by `ws ps`")] = None,
    cwd: Annotated[str, typer.Option(help="working directory in the workspace")] = "/workspace",
    timeout: Annotated[
        float | None, typer.Option(min=0.001, help="seconds after which it is killed (its whole process group)")
    ] = None,
) -> None:
    """Start a command in the background and print its PID; it runs on whatever happens to this shell."""
    argv: str | list[str] = command[0] if len(command) == 1 else command
    options: ProcessOptions = {"tag": tag, "cwd": cwd}
    if timeout is not None:
        options["timeout"] = timeout
    started = request(url, api_key, lambda client: client.start_process(workspace_id, argv, **options))
    console.print(started.pid)


def ws_ps(workspace_id: WorkspaceArgument, url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """List the workspace's background processes, running and exited."""
    found = request(url, api_key, lambda client: client.processes(workspace_id))
    table = Table("PID", "STATUS", "EXIT", "TAG", "COMMAND", box=None)
    for process in found:
        ended = str(process.exit_code) if process.exit_code is not None else (process.signal or "")
        ended += " (timeout)" if process.timed_out else ""
        table.add_row(str(process.pid), process.status, ended, process.tag or "", " ".join(process.command))
    console.print(table)


def ws_logs(
    workspace_id: WorkspaceArgument,
    pid: PidArgument,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="wait for more until it ends")] = False,
    offset: Annotated[int, typer.Option(min=0, help="the byte to start from")] = 0,
) -> None:
    """Print a background process's output (stdout to stdout, stderr to stderr), from `--offset`.

    If interrupted, it says the offset to resume from.
    """
    resume_at = offset

    def run() -> None:
        nonlocal resume_at
        with api_client(url, api_key) as client:
            for event in client.process_output(workspace_id, pid, offset=offset, follow=follow):
                if isinstance(event, ProcessOutputEvent):
                    (sys.stderr if event.stream == "stderr" else sys.stdout).write(event.data)
                    resume_at = event.next_offset
                elif isinstance(event, OutputDroppedEvent):
                    errors.print(f"[yellow]output up to byte {event.resumed_at} is no longer kept[/yellow]")
                elif isinstance(event, ProcessExitEvent):
                    how = f"exit code {event.exit_code}" if event.exit_code is not None else event.signal or "unknown"
                    errors.print(f"[dim]process {pid} ended ({how})[/dim]")
                else:
                    fail(event.error)

    try:
        guarded(run)
    except KeyboardInterrupt:
        sys.stdout.flush()
        errors.print(f"\n[dim]resume with --offset {resume_at}[/dim]")
        raise typer.Exit(130) from None


def ws_kill(
    workspace_id: WorkspaceArgument,
    pid: PidArgument,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    signal_name: Annotated[
        str | None, typer.Option("--signal", "-s", help="send this signal (e.g. SIGINT) instead of killing")
    ] = None,
) -> None:
    """Kill a background process and its whole process group (or send it `--signal`)."""
    if signal_name:
        request(url, api_key, lambda client: client.signal(workspace_id, pid, signal_name))
    else:
        request(url, api_key, lambda client: client.kill(workspace_id, pid))


def ws_shell(
    workspace_id: WorkspaceArgument,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    attach_to: Annotated[
        int | None, typer.Option("--attach", help="PID of a shell left running earlier, to attach to it again")
    ] = None,
) -> None:
    """Open an interactive shell in the workspace (bash if it has one, else sh); exit with its exit code.

    The shell runs as a background process: if the connection drops, it goes on, and
    `--attach PID` takes it up again.
    """
    cols, rows = terminal_size(0)
    env = {"TERM": os.environ.get("TERM", "xterm-256color")}

    def run() -> int:
        with api_client(url, api_key) as client:
            size = TerminalSize(cols=cols, rows=rows)
            pid = attach_to or client.start_process(workspace_id, LOGIN_SHELL, pty=size, env=env).pid
        ended = attach(url, api_key, workspace_id, pid)
        if ended is None:
            fail(f"disconnected; the shell goes on: `agentbox ws shell {workspace_id} --attach {pid}` takes it up")
        return ended.exit_code if ended.exit_code is not None else 128 + signal.Signals[ended.signal or "SIGKILL"]

    raise typer.Exit(guarded(run))


COMMANDS: dict[str, Callable[..., None]] = {
    "spawn": ws_spawn,
    "ps": ws_ps,
    "logs": ws_logs,
    "kill": ws_kill,
    "shell": ws_shell,
}
CONTEXTS: dict[str, dict[str, Any]] = {"spawn": {"allow_extra_args": True, "ignore_unknown_options": True}}
