"""The HTTP API's request and response bodies.

The client parses answers with them, so they stay free of the server: no ORM rows, no settings
(rows become answers in the routes that read them, e.g. api/workspaces.py's `workspace_out`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    WithJsonSchema,
    field_validator,
)

from agentbox.wire.domain import GITHUB_API, Checkout, Command, NewWorkspace, ProviderName, Quota, Status
from agentbox.wire.network import NetworkPolicy
from agentbox.wire.sizes import SizeError, format_size, parse_size

MIN_MEMORY = parse_size("64M")
MIN_DISK = parse_size("64M")
#: The largest size a request may name (1 PiB): beyond any machine, and well inside the 64-bit
#: integers that the engine and the database hold sizes in (a bigger one was a 500).
MAX_SIZE = 1 << 50


def _env_key(key: str) -> str:
    if not key or not (key[0].isalpha() or key[0] == "_") or not all(c.isalnum() or c == "_" for c in key):
        raise ValueError(f"environment variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if not key.isascii():
        raise ValueError(f"environment variable name {key!r} must be ASCII")
    return key


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _absolute_path(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path: start it with /")
    return value


#: The longest time a request may name (a timeout, a lifetime): a week.
MAX_SECONDS = 7 * 86400
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
EnvKey = Annotated[str, Field(max_length=256), AfterValidator(_env_key)]
EnvValue = Annotated[str, Field(max_length=65536), AfterValidator(_no_nul)]
Env = Annotated[dict[EnvKey, EnvValue], Field(max_length=256)]
LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
#: E2B's metadata keys (stored as labels) may also hold `_` ("sandbox_test_id").
MetadataKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, Field(max_length=256), AfterValidator(_no_nul)]
AbsolutePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_absolute_path)]
#: A shell command (run by /bin/sh -c) or an argv list (run as is).
CommandLine = (
    Annotated[str, Field(min_length=1, max_length=1 << 20), AfterValidator(_no_nul)]
    | Annotated[
        list[Annotated[str, Field(max_length=1 << 20), AfterValidator(_no_nul)]], Field(min_length=1, max_length=4096)
    ]
)


def argv_of(command: str | list[str]) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def _size_at_least(minimum: int) -> BeforeValidator:
    def validate(value: object) -> int:
        try:
            size = parse_size(value)  # type: ignore[arg-type]
        except SizeError as exc:
            raise ValueError(str(exc)) from None
        if size < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}")
        if size > MAX_SIZE:
            raise ValueError(f"must be at most {format_size(MAX_SIZE)}")
        return size

    return BeforeValidator(validate)


_SIZE_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
            {"type": "string", "pattern": r"^\d+(\.\d+)?[kmgtKMGT]?(i?[bB])?$"},
        ],
        "description": 'bytes, or a size such as "512M" or "4G" (binary units, as Docker)',
    }
)
Memory = Annotated[int, _size_at_least(MIN_MEMORY), _SIZE_SCHEMA]
Disk = Annotated[int, _size_at_least(MIN_DISK), _SIZE_SCHEMA]


def _pem_private_key(value: SecretStr) -> SecretStr:
    try:
        key = serialization.load_pem_private_key(value.get_secret_value().encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("is not a PEM private key without a passphrase (-----BEGIN ... PRIVATE KEY-----)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("must be an RSA key, as GitHub Apps' keys are")
    return value


def _api_url(value: str) -> str:
    if not value.startswith(("https://", "http://")) or any(c.isspace() for c in value):
        raise ValueError("must be an http(s) URL: https://api.github.com, or https://HOST/api/v3 for Enterprise Server")
    return value.rstrip("/")


class RegisterApp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: int = Field(gt=0, lt=1 << 53, description="the App's id on GitHub")
    private_key: Annotated[SecretStr, Field(max_length=16384), AfterValidator(_pem_private_key)]
    webhook_secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = None
    api_url: Annotated[str, Field(max_length=512), AfterValidator(_api_url)] = GITHUB_API


class GitHubAppOut(BaseModel):
    id: str
    app_id: int
    api_url: str
    has_webhook_secret: bool
    created_at: datetime


class GitHubAppList(BaseModel):
    apps: list[GitHubAppOut]


class RepoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$", description="owner/name on GitHub"
    )
    ref: str | None = Field(
        None, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", description="branch, tag or commit"
    )
    installation_id: int | None = Field(None, gt=0, description="default: the App's installation on the repository")
    app: str | None = Field(None, pattern=r"^gh-[0-9a-f]{16}$", description="registered App; default: your only one")

    def to_checkout(self) -> Checkout:
        return Checkout(self.repository, self.ref, self.installation_id, self.app)


class CheckoutOut(BaseModel):
    """The repository checked out into a workspace when it was made, and where."""

    repository: str = Field(description="owner/name on GitHub")
    ref: str | None = Field(default=None, description="the branch, tag or commit asked for; null: the default branch")
    app: str | None = Field(default=None, description="the registered GitHub App it was fetched with")
    installation_id: int | None = None
    path: str = Field(description="where it is in the workspace")


class PushOut(BaseModel):
    repository: str
    branch: str
    commit: str


class CreateWorkspace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: ProviderName | None = None
    image: str | None = Field(None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    cpu: float | None = Field(None, gt=0, le=256)
    memory: Memory | None = None
    disk: Disk | None = None
    ephemeral: bool = True
    ttl_days: float | None = Field(None, gt=0, le=3650)
    env: Env = Field(default_factory=dict)
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=64)] = Field(default_factory=dict)
    network: NetworkPolicy | None = Field(
        None,
        description='"egress" (the public internet), "none" (loopback only), or {"allow": [CIDRs or hostnames]}; '
        "default: the server's WORKSPACE_NETWORK_POLICY",
    )
    repo: RepoSpec | None = Field(default=None, description="a repository to check out into /workspace/<name>")

    def to_domain(self) -> NewWorkspace:
        fields = {name: getattr(self, name) for name in type(self).model_fields if name != "repo"}
        return NewWorkspace(**fields, repo=self.repo.to_checkout() if self.repo else None)


class ExtendWorkspace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_days: float | None = Field(None, gt=0, le=3650, description="from now; default: the workspace's own TTL")


class WorkspaceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str
    provider: str
    runtime: str
    status: Status
    image: str
    cpu: float
    memory: str
    disk: str
    ephemeral: bool
    ttl_days: float | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(
        default=None,
        description="its last command, file or process call (to the minute); each use of an "
        "ephemeral workspace moves expires_at to its TTL from then",
    )
    labels: dict[str, str]
    network: NetworkPolicy
    repo: CheckoutOut | None = Field(default=None, description="the repository checked out at create, and where")
    memory_kept: bool | None = Field(
        default=None, description="whether its last pause kept its memory and processes (null: never paused)"
    )
    error: str | None = None
    usage: UsageSampleOut | None = Field(
        default=None,
        description="CPU and memory at its last measurement (every WORKSPACE_USAGE_INTERVAL seconds); "
        "null: not running, not measured yet, or its provider cannot say",
    )

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _readable_size(cls, value: int | str) -> str:
        return format_size(value) if isinstance(value, int) else value


class UsageSampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    cpu: float | None = Field(
        description="cores busy on average since the sample before (0.5: half a core); null for the first of a run"
    )
    memory: int = Field(description="bytes in use: its working set, without file cache the kernel can take back")


class UsageOut(BaseModel):
    interval: float = Field(description="seconds between two samples (WORKSPACE_USAGE_INTERVAL)")
    samples: list[UsageSampleOut] = Field(description="the last hour's, oldest first")


class ListeningPorts(BaseModel):
    ports: list[int] = Field(description="TCP ports something listens on inside the workspace, on any address")


class Capacity(BaseModel):
    max_concurrent: int = Field(
        description="workspaces that may be starting or running at once (WORKSPACE_MAX_CONCURRENT)"
    )
    active: int = Field(description="workspaces starting or running now, every owner's (the warm pool's apart)")
    warm_pool_size: int = Field(description="booted workspaces kept ready to claim (WORKSPACE_WARM_POOL_SIZE)")
    warm_pool_ready: int = Field(description="of those, ready now")


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceOut]


class ExecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: CommandLine = Field(description="a shell command run by /bin/sh -c, or an argv list run as is")
    timeout: Seconds | None = Field(
        None,
        description="seconds; the command's process group is killed after it (default: the server's "
        "WORKSPACE_EXEC_TIMEOUT, one hour)",
    )
    cwd: AbsolutePath = "/workspace"
    env: Env = Field(default_factory=dict)

    def to_command(self) -> Command:
        return Command(argv=argv_of(self.command), cwd=self.cwd, env=dict(self.env), timeout=self.timeout)


class ExecOut(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    signal: str | None = Field(
        default=None, description='the signal that killed the command, e.g. "SIGKILL" (memory limit)'
    )


class OutputEvent(BaseModel):
    """A piece of a streamed command's output (a line of POST .../exec/stream)."""

    stream: Literal["stdout", "stderr"]
    data: str


class ExitEvent(BaseModel):
    """How a streamed command ended: its last line, after all of its output."""

    exit_code: int
    timed_out: bool
    duration_ms: int
    signal: str | None = Field(
        default=None, description='the signal that killed the command, e.g. "SIGKILL" (memory limit)'
    )
    stdout_truncated: bool
    stderr_truncated: bool


class ErrorEvent(BaseModel):
    """Why a streamed command could not go on: its last line, instead of an exit."""

    error: str


#: One line of POST .../exec/stream.
ExecStreamEvent = OutputEvent | ExitEvent | ErrorEvent


class DirEntryOut(BaseModel):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: str
    mtime: int


class WatchEventOut(BaseModel):
    """Something that happened under a watched directory (a line of GET .../watch)."""

    type: Literal["create", "write", "remove", "rename", "chmod"]
    path: str


class DirListing(BaseModel):
    path: str
    type: Literal["dir"] = "dir"
    entries: list[DirEntryOut]


class WriteResult(BaseModel):
    path: str
    size: int


class ProviderInfo(BaseModel):
    """What one provider of this server does (its `Capabilities`)."""

    runtime: str
    isolation: str
    network_policies: list[str] = Field(description="the policies it enforces; others are refused (400)")
    stop_start: bool
    archives: bool
    sized_per_request: bool = Field(description="false: cpu, memory and disk come from its template")
    processes: bool = Field(description="background processes and terminals")
    watch: bool = Field(description="watching a directory for changes")
    pause_keeps_memory: list[str] = Field(
        description="the network policies of the workspaces whose pause keeps memory and processes "
        "(a checkpoint); others keep files only"
    )


class ProviderStatus(BaseModel):
    """One provider this server is configured with (WORKSPACE_PROVIDERS), usable or not."""

    name: str
    available: bool
    reason: str | None = Field(default=None, description="why it cannot be used here, and the fix; null when available")
    runtime: str | None = Field(default=None, description="what runs its workspaces (runsc, runc, e2b)")
    platform: str | None = Field(default=None, description="gVisor's platform (systrap, ptrace) for a gVisor provider")
    capabilities: ProviderInfo | None = None
    active: int = Field(description="its workspaces starting or running now, every owner's")


class ProviderList(BaseModel):
    providers: list[ProviderStatus]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    workspaces_enabled: bool
    runtime: str | None
    gvisor: bool
    gvisor_platform: str | None = Field(description="gVisor's platform (systrap, ptrace); null under runc")
    runsc_version: str | None = Field(description="the runsc build in use; null under runc or if unknown")
    runtime_reason: str
    providers: list[str]
    capabilities: dict[str, ProviderInfo] = Field(default_factory=dict, description="per provider offered")
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="providers this server cannot offer, with the reason and the fix"
    )
    e2b_api_url: str | None = Field(
        None, description="E2B_API_URL for code written for E2B's SDK; null when WORKSPACE_E2B_API=false"
    )
    e2b_sandbox_url: str | None = Field(None, description="E2B_SANDBOX_URL for E2B's SDK (envd); null when off")
    version: str
    replica: str | None = Field(None, description="the replica that answered (WORKSPACE_REPLICA_ID)")
    leader: str | None = Field(
        None, description="the replica that leads (runs the background work), as this one last saw; null: none"
    )
    replicas: list[str] = Field(default_factory=list, description="the replicas alive, as this one last saw")


class ReadToolIn(BaseModel):
    path: AbsolutePath
    offset: int = Field(default=1, ge=1, description="the first line to give, counted from 1")
    limit: int = Field(default=2000, ge=1, le=100_000, description="how many lines at most")


class ReadToolOut(BaseModel):
    path: str
    content: str = Field(description='numbered lines ("     1\\tfirst line\\n"), or a directory\'s entries')
    total_lines: int = Field(description="lines in the whole file (entries, for a directory)")
    size: int
    is_binary: bool = Field(description="true: not text (a NUL, or not UTF-8); content is then empty")
    is_directory: bool


class WriteToolIn(BaseModel):
    path: AbsolutePath
    content: str = Field(max_length=16 << 20)


class EditToolIn(BaseModel):
    path: AbsolutePath
    old_string: str = Field(min_length=1, max_length=1 << 20)
    new_string: str = Field(max_length=1 << 20)
    replace_all: bool = False


class EditToolOut(BaseModel):
    path: str
    replacements: int


NoNul = Annotated[str, AfterValidator(_no_nul)]


class GlobToolIn(BaseModel):
    pattern: NoNul = Field(
        min_length=1,
        max_length=4096,
        description="a glob relative to `path`: `*` and `?` within a directory, `**` across any, `{a,b}`, `[...]`",
        examples=["**/*.py"],
    )
    path: AbsolutePath = Field("/workspace", description="the directory to search under")
    limit: int = Field(default=1000, ge=1, le=10_000, description="how many paths at most")


class GlobToolOut(BaseModel):
    paths: list[str] = Field(description="matching files (and links), newest first")
    truncated: bool = Field(description="true: more matched than `limit`, or the search hit its time or size bound")


class GrepToolIn(BaseModel):
    pattern: NoNul = Field(min_length=1, max_length=4096, description="a regular expression (ripgrep's syntax)")
    path: AbsolutePath = Field("/workspace", description="a directory or file to search")
    include: NoNul | None = Field(None, max_length=1024, description='only files whose names match this glob ("*.py")')
    context: int = Field(default=0, ge=0, le=20, description="lines of context around each match")
    ignore_case: bool = False
    limit: int = Field(default=200, ge=1, le=5000, description="how many matching lines at most")


class GrepLineOut(BaseModel):
    path: str
    line_number: int
    line: str = Field(description="the line, cut at 500 characters")
    is_match: bool = Field(description="false for a context line")


class GrepToolOut(BaseModel):
    matches: list[GrepLineOut]
    truncated: bool = Field(description="true: stopped at `limit`, 1 MiB of text or 20 seconds; narrow the search")
    engine: Literal["rg", "grep"] = Field(
        description="rg (skips .gitignored, hidden and binary files) or, in images without it, grep -P"
    )


class AuditRecordOut(BaseModel):
    id: int
    at: datetime
    owner: str | None
    action: str = Field(description='the method and route, e.g. "POST /exec", "POST /sessions/{session_id}/run"')
    arguments: dict[str, JsonValue] = Field(
        description="path, query and body arguments; file contents and env values left out"
    )
    status: int = Field(description="the HTTP status answered (101: a WebSocket accepted)")
    duration_ms: int


class AuditPage(BaseModel):
    records: list[AuditRecordOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as `before` for the next (older) page; null when there is none")


class PreviewURL(BaseModel):
    url: str = Field(
        description="for a browser: the app on its own origin, {port}-{id}.{WORKSPACE_PREVIEW_DOMAIN} "
        "(or {port}-{id}.localhost:{server port} when none is set)"
    )
    path_url: str = Field(
        description="/preview/{token}/ on this server: works without wildcard names; the app's pages are sandboxed"
    )
    expires_at: int = Field(description="Unix time after which the URL is refused (403)")


OwnerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", description="whose the key is")]


class CreateKey(BaseModel):
    """An API key to make (admins only). Quotas limit the owner's active workspaces while this key asks."""

    model_config = ConfigDict(extra="forbid")

    owner: OwnerName
    name: str = Field(min_length=1, max_length=128, description="what it is for, e.g. 'ci' or 'alice laptop'")
    admin: bool = Field(default=False, description="may manage API keys")
    max_workspaces: int | None = Field(default=None, ge=1, le=100_000)
    max_cpus: float | None = Field(default=None, gt=0, le=100_000)
    max_memory: Memory | None = Field(default=None, description='bytes, or a size such as "8G"')

    def quota(self) -> Quota:
        return Quota(self.max_workspaces, self.max_cpus, self.max_memory)


class KeyOut(BaseModel):
    """An API key's record; its secret is never shown again after it was made."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str
    name: str
    admin: bool
    source: Literal["env", "api"] = Field(description="env: from WORKSPACE_API_KEYS; api: made through the API")
    max_workspaces: int | None
    max_cpus: float | None
    max_memory: str | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="its last use (to the minute)")
    revoked_at: datetime | None

    @field_validator("max_memory", mode="before")
    @classmethod
    def _readable_size(cls, value: int | str | None) -> str | None:
        return format_size(value) if isinstance(value, int) else value


class NewKeyOut(KeyOut):
    secret: str = Field(description="the key itself: shown this once, keep it (only its hash is stored)")


class KeyList(BaseModel):
    keys: list[KeyOut]


class FieldError(BaseModel):
    """One bad field of a request (a 422)."""

    # Other keys are kept, not dropped, so that a client sees all a server sent (tests check that a
    # bad value is never echoed back).
    model_config = ConfigDict(extra="allow")

    type: str = Field(description='what kind of problem, e.g. "missing", "string_too_long"')
    loc: list[str | int] = Field(description='where: "body", "query", "path" or "header", then the field\'s path')
    msg: str = Field(description="what is wrong with it")


class ErrorOut(BaseModel):
    """The body of every error the API answers (4xx and 5xx)."""

    detail: str | list[FieldError] = Field(
        description="what went wrong and what to do about it; for a request that does not validate (422), "
        "each bad field"
    )
