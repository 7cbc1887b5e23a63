"""`agentbox templates`: build (the log followed to its end), list and delete your templates on a running server;
`ws create --template NAME[:TAG]` makes a workspace from one."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from agentbox.cli.common import KeyOption, UrlOption, api_client, console, fail, guarded, request

app = typer.Typer(
    help="Your templates on a running agentbox server: workspace images built from a Dockerfile, with a start "
    "command and a ready command (ws create --template NAME[:TAG]).",
    no_args_is_help=True,
)

RefArgument = Annotated[str, typer.Argument(help="the template's NAME[:TAG] (or its id, tpl-...)", show_default=False)]


def _context(directory: Path) -> bytes:
    """The directory as a gzip'd tar, its entries relative to it (the build's context)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return out.getvalue()


@app.command("build")
def templates_build(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] (TAG: latest)", show_default=False)],
    file: Annotated[Path, typer.Option("--file", "-f", help="the Dockerfile (- for stdin)", show_default=False)],
    context: Annotated[
        Path | None, typer.Option("--context", "-c", help="a directory sent as the build's context (COPY, ADD)")
    ] = None,
    start_cmd: Annotated[str | None, typer.Option(help="started in the background in each workspace")] = None,
    ready_cmd: Annotated[str | None, typer.Option(help="a workspace is handed out once this exits 0")] = None,
    ready_timeout: Annotated[float, typer.Option(help="seconds the ready command has")] = 60.0,
    pool_size: Annotated[int, typer.Option(help="workspaces of it kept booted and ready")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no log; the id once built")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Build a template, print its build's log as it comes, and its id at the end (exit 1 if it failed)."""
    name, _, tag = ref.partition(":")
    dockerfile = sys.stdin.read() if str(file) == "-" else file.read_text() if file.is_file() else None
    if dockerfile is None:
        fail(f"--file {file}: no such file", 2)
    if context is not None and not context.is_dir():
        fail(f"--context {context}: not a directory", 2)
    archive = _context(context) if context is not None else None
    with api_client(url, api_key) as client:
        started = guarded(
            lambda: client.build_template(
                name,
                dockerfile,
                tag=tag or "latest",
                context=archive,
                start_cmd=start_cmd,
                ready_cmd=ready_cmd,
                ready_timeout=ready_timeout,
                pool_size=pool_size,
            )
        )
        status, error = "building", None
        for line in guarded(lambda: client.template_log(started.id)):
            if line.data and not quiet:
                sys.stdout.write(line.data)
                sys.stdout.flush()
            if line.status is not None:
                status, error = line.status, line.error
    if status != "ready":
        fail(f"template {name}:{tag or 'latest'} ({started.id}) {status}: {error}")
    console.print(started.id, highlight=False)


@app.command("ls")
def templates_ls(url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """List your templates: name:tag, id, status, pool, created."""
    found = request(url, api_key, lambda client: client.templates())
    table = Table(Column("template", no_wrap=True), Column("id", no_wrap=True), "status", "pool", "created")
    for template in found:
        table.add_row(
            f"{template.name}:{template.tag}",
            template.id,
            template.status if template.error is None else f"{template.status}: {template.error[:60]}",
            f"{template.pool_ready}/{template.pool_size}" if template.pool_size else "-",
            template.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("log")
def templates_log(ref: RefArgument, url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """Print a template's build log (following it while it builds)."""
    with api_client(url, api_key) as client:
        for line in guarded(lambda: client.template_log(ref)):
            if line.data:
                sys.stdout.write(line.data)
            if line.status is not None and line.status != "ready":
                fail(f"template {ref} {line.status}: {line.error}")


@app.command("rm")
def templates_rm(ref: RefArgument, url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """Delete a template and its image (refused while workspaces made from it are left)."""
    request(url, api_key, lambda client: client.delete_template(ref))
    console.print(f"deleted template {ref}", highlight=False)
