"""The `agentbox` command: run the server, check the host, and drive workspaces from a shell."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import tarfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import TypeAdapter
from rich.table import Column, Table

from agentbox.cli import keys as cli_keys
from agentbox.cli import processes as cli_processes
from agentbox.cli import snapshots as cli_snapshots
from agentbox.cli import templates as cli_templates
from agentbox.cli import vault as cli_vault
from agentbox.cli import volumes as cli_volumes
from agentbox.cli.common import KeyOption, UrlOption, api_client, console, errors, fail, guarded, request, require_key
from agentbox.client import AllowOptions, ExecOptions, RepoOptions, WorkspaceOptions
from agentbox.config import ConfigError, Settings, load_settings
from agentbox.wire.commands import ExitEvent, OutputEvent
from agentbox.wire.files import DirListing
from agentbox.wire.network import NetworkPolicy, policy_json

app = typer.Typer(help="Isolated workspaces for AI agents, on Docker with gVisor.", no_args_is_help=True)
ws = typer.Typer(help="Manage workspaces on a running agentbox server.", no_args_is_help=True)
app.add_typer(ws, name="ws")
github = typer.Typer(help="GitHub App credentials stored by this server.", no_args_is_help=True)
app.add_typer(github, name="github")
app.add_typer(cli_keys.app, name="keys")
app.add_typer(cli_vault.app, name="secrets")
app.add_typer(cli_volumes.app, name="volumes")
app.add_typer(cli_snapshots.app, name="snapshots")
app.add_typer(cli_templates.app, name="templates")
cli_snapshots.register(ws)
_TIMESTAMP = TypeAdapter(datetime)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    reuse_port: Annotated[
        bool,
        typer.Option(
            help="share the port with other replicas of this deployment (SO_REUSEPORT: the kernel spreads "
            "connections between them, and a replica that stops leaves the others serving)"
        ),
    ] = False,
) -> None:
    """Run the HTTP API server."""
    import uvicorn

    from agentbox.server.app import create_app
    from agentbox.server.service import Service, StartupError
    from agentbox.web.websocket_relay import MAX_MESSAGE

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    sockets = []
    if reuse_port:
        # Bound before the service starts, so that a port another program holds fails at once.
        try:
            sockets = [_reused_port(host, port)]
        except OSError as exc:
            fail(
                f"cannot listen on {host}:{port} with SO_REUSEPORT: {exc.strerror}; stop what holds the port (only "
                "other `agentbox serve --reuse-port` of this user may share it) or choose another --port or --host",
                2,
            )
    try:
        service = Service.start(settings, address=f"{host}:{port}")
    except StartupError as exc:
        fail(exc.detail, 2)
    console.print(
        f"Dashboard: http://{host}:{port}/ui/ (sign in with an API key; admins make more: agentbox keys create)",
        highlight=False,
    )
    if settings.enabled and settings.e2b_api:
        from agentbox.e2b_api.control import sdk_urls

        api, sandbox = sdk_urls(f"http://{host}:{port}")
        console.print(
            f"E2B's SDK: E2B_API_URL={api} E2B_SANDBOX_URL={sandbox} (E2B_API_KEY: an agentbox API key)",
            soft_wrap=True,
            highlight=False,
        )
    try:
        # The app closes the service at shutdown (warm pool removed, background work stopped).
        # A WebSocket's incoming messages are queued by uvicorn until the app reads them: a few, of at
        # most the size a relay passes on (web/proxy.py), not its defaults of 32 x 16 MiB.
        config = uvicorn.Config(
            create_app(settings, service),
            host=host,
            port=port,
            log_level=log_level.lower(),
            ws_max_size=MAX_MESSAGE,
            ws_max_queue=4,
        )
        uvicorn.Server(config).run(sockets=sockets or None)
    except BaseException:
        service.close()  # e.g. the port was taken: uvicorn exits before any shutdown
        raise


def _reused_port(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that other processes with SO_REUSEPORT may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@github.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every stored GitHub App secret, and every owner's secret, under GITHUB_APP_ENCRYPTION_KEY.

    Give the key they are sealed with now as GITHUB_APP_ENCRYPTION_OLD_KEY. A running server
    given both keys keeps working throughout; afterwards drop the old one. All or nothing for each.
    """
    from agentbox.db.store import Store
    from agentbox.github.service import GitHub, SealedSecretError
    from agentbox.vault import Unsealable, Vault

    settings = _settings()
    keyring = settings.keyring
    if keyring is None:
        fail(
            "GITHUB_APP_ENCRYPTION_KEY is not set: set it to the new key (and GITHUB_APP_ENCRYPTION_OLD_KEY to the old)"
        )
    store = Store(settings.sqlalchemy_url)
    try:
        store.migrate()
        resealed, apps = GitHub(store, keyring).rotate()
        console.print(f"re-encrypted {resealed} secret(s) of {apps} GitHub App(s) under the current key")
        # The vault's values are sealed with the same key: an old key dropped after a rotation must open none.
        resealed, held = Vault(store, keyring).rotate()
        console.print(f"re-sealed {resealed} of {held} owners' secret(s) (agentbox secrets) under the current key")
    except (SealedSecretError, Unsealable) as exc:
        fail(exc.detail)
    finally:
        store.close()


@app.command()
def doctor() -> None:
    """Check that gVisor is installed, registered and working, and say how to fix what is not."""
    from agentbox.cli.doctor import run_checks

    failed = 0
    for check in run_checks(_settings()):
        failed += not check.ok
        mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name}: {check.detail}", highlight=False, soft_wrap=True)
        if not check.ok:
            console.print(f"     [yellow]fix:[/yellow] {check.fix}", highlight=False, soft_wrap=True)
    if failed:
        fail(f"{failed} check(s) failed: each says how to fix it above")


@app.command("mcp")
def mcp_stdio(url: UrlOption = "http://127.0.0.1:8000", api_key: KeyOption = "") -> None:
    """Serve agentbox's tools over MCP on stdin and stdout, for MCP clients that launch a command.

    Each tool call is a request to the server at --url (AGENTBOX_URL) with --api-key
    (AGENTBOX_API_KEY). A server also serves MCP itself, over HTTP at /mcp.
    """
    import anyio

    from agentbox.mcp.stdio import serve as serve_mcp

    anyio.run(serve_mcp, url, require_key(api_key))


# Client commands


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            fail(f"{flag} {value!r} must be KEY=VALUE", 2)
        pairs[key] = val
    return pairs


@ws.command("create")
def ws_create(
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    image: Annotated[str | None, typer.Option(help="image (default: the server's WORKSPACE_IMAGE)")] = None,
    provider: Annotated[str | None, typer.Option(help="gvisor, docker or e2b")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPUs, e.g. 1.5")] = None,
    memory: Annotated[str | None, typer.Option(help="memory limit, e.g. 2G")] = None,
    disk: Annotated[str | None, typer.Option(help="disk limit, e.g. 10G")] = None,
    persistent: Annotated[bool, typer.Option("--persistent", help="never expire")] = False,
    ttl_days: Annotated[float | None, typer.Option(help="days until an ephemeral workspace expires")] = None,
    env: Annotated[list[str], typer.Option("--env", "-e", help="KEY=VALUE, repeatable")] = [],  # noqa: B006
    label: Annotated[list[str], typer.Option("--label", "-l", help="KEY=VALUE, repeatable")] = [],  # noqa: B006
    network: NetworkOption = None,
    allow: AllowOption = [],  # noqa: B006
    deny: DenyOption = [],  # noqa: B006
    default: DefaultOption = None,
    precedence: PrecedenceOption = None,
    network_file: NetworkFileOption = None,
    repo: Annotated[str | None, typer.Option(help="owner/name to check out into /workspace/<name>")] = None,
    ref: Annotated[str | None, typer.Option(help="branch, tag or commit of --repo")] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(help="seconds unused before it is suspended (its next use wakes it); 0: never, else at least 2"),
    ] = None,
    volume: Annotated[
        list[str],
        typer.Option("--volume", "-v", help="NAME:PATH[:ro]: mount your volume NAME at PATH (read-only); repeatable"),
    ] = [],  # noqa: B006
    snapshot: Annotated[
        str | None, typer.Option(help="one of your snapshots (id or name): its files, memory where kept, its spec")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="one of your templates (NAME[:TAG] or id): its image, started and ready")
    ] = None,
) -> None:
    """Create a workspace and print its id."""
    options = WorkspaceOptions(ephemeral=not persistent, env=_pairs(env, "--env"), labels=_pairs(label, "--label"))
    if image is not None:
        options["image"] = image
    if provider is not None:
        options["provider"] = provider
    if cpu is not None:
        options["cpu"] = cpu
    if memory is not None:
        options["memory"] = memory
    if disk is not None:
        options["disk"] = disk
    if ttl_days is not None:
        options["ttl_days"] = ttl_days
    if idle_timeout is not None:
        options["idle_timeout"] = idle_timeout
    if snapshot is not None:
        options["snapshot"] = snapshot
    if template is not None:
        options["template"] = template
    if volume:
        options["volumes"] = [cli_volumes.parse_mount(text) for text in volume]
    if (policy := _network_policy(network, allow, deny, default, precedence, network_file)) is not None:
        options["network"] = policy
    if repo is not None:
        options["repo"] = RepoOptions(repository=repo)
        if ref is not None:
            options["repo"]["ref"] = ref
    workspace = request(url, api_key, lambda client: client.create(**options))
    console.print(workspace.id, highlight=False)


# The network flags of `ws create` and `ws network`: "egress" or "none", or an egress policy (README, "Egress
# by name") from --allow/--deny/--default/--precedence or whole from a JSON file (header rules go there).
NetworkOption = Annotated[str | None, typer.Option(help="egress (the public internet) or none (loopback only)")]
AllowOption = Annotated[
    list[str],
    typer.Option("--allow", help="allow this destination: name, *.wildcard or IPv4 CIDR, with :PORT; repeatable"),
]
DenyOption = Annotated[list[str], typer.Option("--deny", help="deny this destination (as --allow); repeatable")]
DefaultOption = Annotated[
    str | None, typer.Option(help="what no rule matches: deny (the default with --allow) or allow")
]
PrecedenceOption = Annotated[
    str | None, typer.Option(help="which wins when --allow and --deny both match: deny (the default) or allow")
]
NetworkFileOption = Annotated[
    Path | None,
    typer.Option(
        "--network-file", help='the whole policy as JSON ({"allow": [...], "deny": [...], "headers": [...]}), - stdin'
    ),
]


def _network_policy(
    network: str | None,
    allow: list[str],
    deny: list[str] | None = None,
    default: str | None = None,
    precedence: str | None = None,
    network_file: Path | None = None,
) -> Literal["egress", "none"] | AllowOptions | None:
    """The network flags as a policy; None: none given (the server's default). The server checks the rules (its
    422 names the entry)."""
    deny = deny or []
    rules = bool(allow or deny or default is not None or precedence is not None)
    given = [name for name, used in (("--network", network is not None), ("--network-file", network_file)) if used]
    if len(given) + rules > 1:
        fail("give one of --network, --network-file, or rules (--allow, --deny, --default, --precedence)", 2)
    if network_file is not None:
        return _policy_file(network_file)
    if rules:
        policy = AllowOptions(allow=allow)
        if deny:
            policy["deny"] = deny
        for flag, value in (("default", default), ("precedence", precedence)):
            if value is not None and value not in ("allow", "deny"):
                fail(f"--{flag} {value!r}: allow or deny", 2)
        if default is not None:
            policy["default"] = default  # type: ignore[typeddict-item]
        if precedence is not None:
            policy["precedence"] = precedence  # type: ignore[typeddict-item]
        return policy
    if network is None:
        return None
    if network == "egress":
        return "egress"
    if network == "none":
        return "none"
    fail(f"--network {network!r}: egress or none (or rules: --allow DESTINATION, repeatable)", 2)


def _policy_file(path: Path) -> Literal["egress", "none"] | AllowOptions:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        policy = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"--network-file {path}: {exc}", 2)
    if policy in ("egress", "none") or isinstance(policy, dict):
        return policy  # type: ignore[no-any-return]
    fail(f'--network-file {path}: a JSON object ({{"allow": [...]}}) or "egress"', 2)


@ws.command("network")
def ws_network(
    workspace_id: str,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    network: NetworkOption = None,
    allow: AllowOption = [],  # noqa: B006
    deny: DenyOption = [],  # noqa: B006
    default: DefaultOption = None,
    precedence: PrecedenceOption = None,
    network_file: NetworkFileOption = None,
) -> None:
    """Show a workspace's network policy, or change it (the flags of `ws create`; it replaces the whole policy).
    Its new connections obey the change at once."""
    policy = _network_policy(network, allow, deny, default, precedence, network_file)
    if policy is None:
        workspace = request(url, api_key, lambda client: client.get(workspace_id))
    else:
        workspace = request(url, api_key, lambda client: client.set_network(workspace_id, policy))
    console.print_json(json.dumps(_shown(workspace.network)))


def _shown(network: NetworkPolicy) -> object:
    """A policy as JSON that `--network-file` takes back, each entry as the string `--allow` takes where it has
    one ("name", "name:PORT")."""
    if isinstance(network, str):
        return network
    shown = policy_json(network)
    for side, entries in (("allow", network.allow), ("deny", network.deny)):
        if entries:
            shown[side] = [
                e.describe() if e.ports is None or len(e.ports) == 1 else shown[side][i] for i, e in enumerate(entries)
            ]
    return shown


@ws.command("ls")
def ws_ls(
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print ids only")] = False,
) -> None:
    """List your workspaces."""
    found = request(url, api_key, lambda client: client.list(status=status))
    if quiet:
        for w in found:
            print(w.id)
        return
    table = Table("status", "runtime", "image", "cpu", "memory", "expires")
    table.columns.insert(0, Column("id", no_wrap=True))
    for w in found:
        status = f"{w.status} (suspended)" if w.suspended else w.status
        table.add_row(w.id, status, w.runtime, w.image, str(w.cpu), w.memory, _timestamp(w.expires_at))
    console.print(table)


@ws.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ws_exec(
    workspace_id: Annotated[str, typer.Argument(help="workspace id")],
    command: Annotated[list[str], typer.Argument(help="command and arguments (after --)")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
    timeout: Annotated[
        float | None,
        typer.Option(help="seconds before the command is killed (default: the server's WORKSPACE_EXEC_TIMEOUT, 1 h)"),
    ] = None,
    cwd: Annotated[str, typer.Option(help="working directory in the workspace")] = "/workspace",
) -> None:
    """Run a command, streaming its output; exit with its exit code (124 if it timed out)."""
    options = ExecOptions(cwd=cwd)
    if timeout:
        options["timeout"] = timeout
    argv: str | list[str] = command[0] if len(command) == 1 else command
    code = 1

    def run() -> None:
        nonlocal code
        with api_client(url, api_key) as client:
            for event in client.exec_stream(workspace_id, argv, **options):
                if isinstance(event, OutputEvent):
                    (sys.stdout if event.stream == "stdout" else sys.stderr).write(event.data)
                elif isinstance(event, ExitEvent):
                    code = event.exit_code
                    if event.timed_out:  # its exit code is then 124, as under timeout(1)
                        errors.print(f"[yellow]timed out after {event.duration_ms / 1000:.1f} s[/yellow]")
                    elif event.signal:
                        errors.print(f"[yellow]killed by {event.signal}[/yellow]")
                else:
                    fail(event.error)

    guarded(run)
    sys.stdout.flush()
    raise typer.Exit(code)


@ws.command("cp")
def ws_cp(
    source: Annotated[str, typer.Argument(help="LOCAL_PATH or WORKSPACE:/path")],
    destination: Annotated[str, typer.Argument(help="LOCAL_PATH or WORKSPACE:/path")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Copy a file or directory into or out of a workspace (like docker cp)."""
    remote_src, remote_dst = _remote(source), _remote(destination)
    if (remote_src is None) == (remote_dst is None):
        fail("exactly one of SOURCE and DESTINATION must be WORKSPACE:/path", 2)
    with api_client(url, api_key) as client:
        if remote_dst is not None:
            workspace_id, path = remote_dst
            local = Path(source)
            if local.is_dir():
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    tar.add(local, arcname=".")
                guarded(lambda: client.write_archive(workspace_id, path, buffer.getvalue()))
            elif local.is_file():
                guarded(lambda: client.write_file(workspace_id, path, local.read_bytes()))
            else:
                fail(f"{source}: no such file or directory", 2)
        else:
            assert remote_src is not None
            workspace_id, path = remote_src
            content = guarded(lambda: client.read_path(workspace_id, path))
            if isinstance(content, DirListing):
                data = guarded(lambda: client.read_archive(workspace_id, path))
                Path(destination).mkdir(parents=True, exist_ok=True)
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    tar.extractall(destination, filter="data")
            else:
                Path(destination).write_bytes(content)


@ws.command("push")
def ws_push(
    workspace_id: Annotated[str, typer.Argument(help="workspace id")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Push the current branch of the workspace's repository (made with --repo) to GitHub."""
    pushed = request(url, api_key, lambda client: client.git_push(workspace_id))
    console.print(f"pushed {pushed.branch} ({pushed.commit[:12]}) to {pushed.repository}", highlight=False)


@ws.command("preview")
def ws_preview(
    workspace_id: Annotated[str, typer.Argument(help="workspace id")],
    port: Annotated[int, typer.Argument(help="the port a server listens on inside the workspace", min=1, max=65535)],
    expires_in: Annotated[int, typer.Option("--expires-in", help="seconds the URL works", min=60)] = 3600,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Print a URL that opens the server on PORT in the workspace in a browser (no key needed)."""
    preview = request(url, api_key, lambda client: client.preview_url(workspace_id, port, expires_in))
    print(preview.url)


@ws.command("rm")
def ws_rm(
    workspace_ids: Annotated[list[str], typer.Argument(help="workspace ids")],
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Delete workspaces and everything in them."""
    with api_client(url, api_key) as client:
        for workspace_id in workspace_ids:
            guarded(lambda workspace_id=workspace_id: client.delete(workspace_id))  # type: ignore[misc]
            console.print(f"deleted {workspace_id}", highlight=False)


@ws.command("extend")
def ws_extend(
    workspace_id: Annotated[str, typer.Argument(help="workspace id")],
    ttl_days: Annotated[float | None, typer.Option("--ttl-days", help="from now; default: its own TTL")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Renew an ephemeral workspace's TTL."""
    if ttl_days is not None and not ttl_days > 0:
        raise typer.BadParameter(
            "must be more than 0 (fractions are fine: 0.5 is twelve hours)", param_hint="--ttl-days"
        )
    workspace = request(url, api_key, lambda client: client.extend(workspace_id, ttl_days))
    console.print(f"{workspace_id} now expires at {_timestamp(workspace.expires_at)}", highlight=False)


def _timestamp(moment: datetime | None) -> str:
    """As the API wrote it (ISO 8601, UTC as Z), or "never"."""
    return "never" if moment is None else str(_TIMESTAMP.dump_python(moment, mode="json"))


def _remote(spec: str) -> tuple[str, str] | None:
    workspace_id, sep, path = spec.partition(":")
    if sep and workspace_id.startswith("ws-") and path.startswith("/"):
        return workspace_id, path
    return None


for name, command in cli_processes.COMMANDS.items():
    ws.command(name, context_settings=cli_processes.CONTEXTS.get(name))(command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
