"""`agentbox keys`: make, list and revoke API keys on a running server (an admin's key for most)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from agentbox.cli.common import KeyOption, UrlOption, console, errors, request
from agentbox.client import KeyQuota

app = typer.Typer(
    help="API keys of a running agentbox server (an admin's key makes and lists them).", no_args_is_help=True
)


@app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="whose the key is (their workspaces are theirs alone)")],
    name: Annotated[str, typer.Option(help="what it is for, e.g. ci")],
    admin: Annotated[bool, typer.Option("--admin", help="may manage API keys")] = False,
    max_workspaces: Annotated[int | None, typer.Option(help="quota: active workspaces of the owner", min=1)] = None,
    max_cpus: Annotated[float | None, typer.Option(help="quota: CPUs of the owner's active workspaces")] = None,
    max_memory: Annotated[str | None, typer.Option(help="quota: their memory together, e.g. 16G")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Make a key and print its secret (shown this once: keep it)."""
    quota = KeyQuota()
    if max_workspaces is not None:
        quota["max_workspaces"] = max_workspaces
    if max_cpus is not None:
        quota["max_cpus"] = max_cpus
    if max_memory is not None:
        quota["max_memory"] = max_memory
    made = request(url, api_key, lambda client: client.create_key(owner, name, admin, **quota))
    errors.print(f"made {made.id} for {made.owner}; its secret is shown this once:", highlight=False)
    console.print(made.secret, highlight=False, soft_wrap=True)


@app.command("ls")
def keys_ls(
    owner: Annotated[str | None, typer.Option(help="only this owner's")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """List keys (an admin: everyone's; others: their own). Secrets are never shown again."""
    found = request(url, api_key, lambda client: client.list_keys(owner, revoked))
    table = Table(Column("id", no_wrap=True), "owner", "name", "admin", "quota", "last used", "revoked")
    for key in found:
        quota = ", ".join(
            f"{label} {value}"
            for label, value in (
                ("workspaces", key.max_workspaces),
                ("cpus", key.max_cpus),
                ("memory", key.max_memory),
            )
            if value is not None
        )
        used = key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never"
        revoked_at = key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else ""
        table.add_row(key.id, key.owner, key.name, "yes" if key.admin else "", quota or "-", used, revoked_at)
    console.print(table)


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (see `agentbox keys ls`)")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Revoke a key: it, and every link, token and connection made with it, stops working within a second."""
    revoked = request(url, api_key, lambda client: client.revoke_key(key_id))
    console.print(f"revoked {revoked.id} ({revoked.name}, {revoked.owner})", highlight=False)
