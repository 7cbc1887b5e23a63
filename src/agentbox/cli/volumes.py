"""`agentbox volumes`: create, list and delete your named volumes on a running server; `ws create --volume
NAME:PATH[:ro]` mounts one into a new workspace."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from agentbox.cli.common import KeyOption, UrlOption, console, fail, request
from agentbox.client import VolumeOptions
from agentbox.wire.sizes import format_size
from agentbox.wire.volumes import mount_path_problem, name_problem

app = typer.Typer(
    help="Your named volumes on a running agentbox server: disks of their own size, mounted into workspaces at "
    "their create (ws create --volume NAME:PATH[:ro]), kept when those go.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="the volume's name (or its id, vol-...)", show_default=False)]


def parse_mount(text: str) -> VolumeOptions:
    """`--volume NAME:PATH[:ro]` as a create's volume; exits with status 2 naming what is wrong."""
    name, _, rest = text.partition(":")
    path, read_only = rest, False
    if rest.endswith(":ro") or rest.endswith(":rw"):
        path, read_only = rest[:-3], rest.endswith(":ro")
    if (problem := name_problem(name)) is not None:
        fail(f"--volume {text!r}: the name {problem}", 2)
    if (problem := mount_path_problem(path)) is not None:
        fail(f"--volume {text!r}: NAME:PATH[:ro], where PATH {problem}", 2)
    return VolumeOptions(name=name, path=path, read_only=read_only)


@app.command("create")
def volumes_create(
    name: Annotated[str, typer.Argument(help="its name, e.g. datasets", show_default=False)],
    size: Annotated[str, typer.Option("--size", help="its size, e.g. 1G (writes past it fail: ENOSPC)")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Create a volume and print its id."""
    if (problem := name_problem(name)) is not None:
        fail(f"NAME {name[:80]!r}: {problem}", 2)
    made = request(url, api_key, lambda client: client.create_volume(name, size))
    console.print(made.id, highlight=False)


@app.command("ls")
def volumes_ls(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="names only, one a line")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """List your volumes: name, id, size, bytes written, the workspaces that mount each."""
    found = request(url, api_key, lambda client: client.volumes())
    if quiet:
        for volume in found:
            console.print(volume.name, highlight=False)
        return
    table = Table(Column("name", no_wrap=True), Column("id", no_wrap=True), "size", "used", "used by", "created")
    for volume in found:
        used = format_size(volume.used) if volume.used is not None else "-"
        table.add_row(
            volume.name,
            volume.id,
            volume.size,
            used,
            ", ".join(volume.used_by) or "-",
            volume.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("rm")
def volumes_rm(name: NameArgument, url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """Delete a volume and what it holds (refused while a workspace mounts it)."""
    request(url, api_key, lambda client: client.delete_volume(name))
    console.print(f"deleted volume {name}", highlight=False)
