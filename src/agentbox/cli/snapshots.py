"""`agentbox snapshots ls/rm`, and `agentbox ws snapshot ID [--name]` and `ws fork ID --count N` (registered on the
`ws` group by main.py); `ws create --snapshot` makes a workspace from one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from agentbox.cli.common import KeyOption, UrlOption, api_client, console, fail, guarded, request
from agentbox.wire.sizes import format_size
from agentbox.wire.snapshots import MAX_FORK

app = typer.Typer(
    help="Your snapshots on a running agentbox server: a workspace's files (and memory, where kept), to make "
    "workspaces from (ws create --snapshot ID-or-NAME).",
    no_args_is_help=True,
)


@app.command("ls")
def snapshots_ls(
    workspace: Annotated[str | None, typer.Option("--workspace", help="only those of this workspace")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="ids only, one a line")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """List your snapshots, newest first: id, name, workspace, memory kept, size on the host."""
    found = []
    with api_client(url, api_key) as client:
        before: str | None = None
        while True:
            page = guarded(lambda before=before: client.snapshots(workspace_id=workspace, before=before))  # type: ignore[misc]
            found += page.snapshots
            if page.next_before is None:
                break
            before = page.next_before
    if quiet:
        for snapshot in found:
            console.print(snapshot.id, highlight=False)
        return
    table = Table(Column("id", no_wrap=True), "name", "workspace", "memory", "size", "created")
    for snapshot in found:
        table.add_row(
            snapshot.id,
            snapshot.name or "-",
            snapshot.workspace_id,
            "kept" if snapshot.memory_kept else "files only",
            format_size(snapshot.size),
            snapshot.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


@app.command("rm")
def snapshots_rm(
    snapshots: Annotated[list[str], typer.Argument(help="snapshot ids or names", show_default=False)],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Delete snapshots (workspaces made from them are not touched)."""
    with api_client(url, api_key) as client:
        for snapshot in snapshots:
            guarded(lambda snapshot=snapshot: client.delete_snapshot(snapshot))  # type: ignore[misc]
            console.print(f"deleted {snapshot}", highlight=False)


def register(ws: typer.Typer) -> None:
    """Add `snapshot` and `fork` to the `ws` group."""

    @ws.command("snapshot")
    def ws_snapshot(
        workspace_id: Annotated[str, typer.Argument(help="workspace id")],
        name: Annotated[str | None, typer.Option("--name", help="a name of yours to find it by")] = None,
        url: UrlOption = "http://127.0.0.1:8000",
        api_key: KeyOption = "",
    ) -> None:
        """Snapshot a workspace (it goes on running) and print the snapshot's id."""
        taken = request(url, api_key, lambda client: client.snapshot(workspace_id, name))
        console.print(taken.id, highlight=False)
        if taken.memory_note:
            console.print(taken.memory_note, highlight=False, style="dim")

    @ws.command("fork")
    def ws_fork(
        workspace_id: Annotated[str, typer.Argument(help="workspace id")],
        count: Annotated[int, typer.Option("--count", "-n", help=f"how many workspaces, 1 to {MAX_FORK}")] = 1,
        url: UrlOption = "http://127.0.0.1:8000",
        api_key: KeyOption = "",
    ) -> None:
        """Fork a workspace into COUNT new ones: print each new id (or its error); exit 1 when any failed."""
        if not 1 <= count <= MAX_FORK:
            fail(f"--count {count}: from 1 to {MAX_FORK}", 2)
        fork = request(url, api_key, lambda client: client.fork(workspace_id, count))
        for member in fork.workspaces:
            if member.id is not None:
                console.print(member.id, highlight=False)
            else:
                console.print(f"failed: {member.error}", highlight=False, style="red")
        if fork.snapshot.memory_note:
            console.print(fork.snapshot.memory_note, highlight=False, style="dim")
        if fork.made < count:
            raise typer.Exit(1)
