"""`agentbox secrets`: set, list and delete your secrets on a running server. A value is read from stdin
or a file, never from the command line, where `ps` and shell histories would show it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from agentbox.cli.common import KeyOption, UrlOption, console, fail, request
from agentbox.wire.vault import MAX_VALUE_BYTES, name_problem, value_problem

app = typer.Typer(
    help="Your secrets on a running agentbox server: stored sealed, listed by name, never shown again; only "
    "the egress proxy puts them into a workspace's requests.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="the secret's name, e.g. OPENAI_API_KEY", show_default=False)]


def _checked_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        fail(f"NAME {name[:80]!r}: {problem}", 2)
    return name


def _read_value(value_file: Path | None) -> str:
    """The value from `value_file` ("-": stdin), or stdin; typed without an echo when stdin is a terminal."""
    where = "--value-file" if value_file is not None and str(value_file) != "-" else "stdin"
    if where == "stdin" and sys.stdin.isatty():
        typed: str = typer.prompt("value", hide_input=True, confirmation_prompt=True)
        data = typed.encode()
    else:
        try:
            # One byte past the limit is enough to know it is too large, whatever the file's size.
            if where == "stdin":
                data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 2)
            else:
                assert value_file is not None
                with value_file.open("rb") as file:
                    data = file.read(MAX_VALUE_BYTES + 2)
        except OSError as exc:
            fail(f"--value-file {value_file}: cannot read it: {exc.strerror or exc}", 2)
    # `echo "$TOKEN" |` and files end with a line break that is no part of the secret (a header's value
    # cannot hold one): one is dropped.
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if len(data) > MAX_VALUE_BYTES:  # before decoding: the read may have cut a character in two
        fail(f"{where}: the value is over {MAX_VALUE_BYTES} bytes, the limit", 2)
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{where}: the value is not UTF-8 text", 2)
    problem = value_problem(value)
    if problem is not None:
        fail(f"{where}: the value {problem}", 2)
    return value


@app.command("set")
def secrets_set(
    name: NameArgument,
    value_file: Annotated[
        Path | None,
        typer.Option(
            "--value-file",
            help="read the value from this file ('-': stdin); default: stdin, typed without an echo at a terminal",
            dir_okay=False,
        ),
    ] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Store a secret (create or replace). Its value comes from stdin or --value-file, never the command line;
    one line break at its end is dropped."""
    _checked_name(name)
    value = _read_value(value_file)
    stored = request(url, api_key, lambda client: client.put_secret(name, value))
    verb = "set" if stored.created_at == stored.updated_at else "replaced"
    console.print(f"{verb} secret {stored.name}", highlight=False)


@app.command("ls")
def secrets_ls(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="names only, one a line")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """List your secrets by name, with when each was made and last set (never their values)."""
    found = request(url, api_key, lambda client: client.secrets())
    if quiet:
        for secret in found:
            console.print(secret.name, highlight=False)
        return
    table = Table(Column("name", no_wrap=True), "created", "updated")
    for secret in found:
        table.add_row(
            secret.name, secret.created_at.strftime("%Y-%m-%d %H:%M"), secret.updated_at.strftime("%Y-%m-%d %H:%M")
        )
    console.print(table)


@app.command("rm")
def secrets_rm(name: NameArgument, url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """Delete a secret and its value."""
    _checked_name(name)
    request(url, api_key, lambda client: client.delete_secret(name))
    console.print(f"deleted secret {name}", highlight=False)
