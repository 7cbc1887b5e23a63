"""Settings, read once from the environment and validated at start-up.

The variable names and defaults of the first block are the contract of
`gvisor-runtime-setup.md`; the rest are agentbox's own and share the `WORKSPACE_` prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse as parse_rate
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from agentbox.github.crypto import Keyring, parse_key
from agentbox.wire.common import IdleTimeout
from agentbox.wire.domain import ProviderName as ProviderName  # re-exported: service.py knows it from here
from agentbox.wire.network import NetworkPolicy
from agentbox.wire.sizes import SizeError, parse_size

_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except SizeError as exc:
        raise ValueError(str(exc)) from None


Size = Annotated[int, BeforeValidator(_size)]


def _policy(value: Any) -> Any:
    """`none`, `egress`, or an allow list as JSON: {"allow": ["203.0.113.0/24", "pypi.org"]}."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
    return value


def _names(value: Any) -> Any:
    """A comma-separated list, as the environment gives it."""
    return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value


def _default_replica_id() -> str:
    """This process's name among the replicas sharing a database: the host's name and a random part, so that
    two processes never share one by accident (a restart is a new replica unless WORKSPACE_REPLICA_ID says)."""
    return f"{socket.gethostname()[:48]}-{secrets.token_hex(4)}"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agentbox"


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable and what to do."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    # The specification's variables.
    enabled: bool = Field(False, validation_alias="ENABLE_AGENT_WORKSPACES")
    default_provider: ProviderName = Field("gvisor", validation_alias="WORKSPACE_DEFAULT_PROVIDER")
    default_cpu: float = Field(2, gt=0, le=1024, validation_alias="WORKSPACE_DEFAULT_CPU")
    default_memory: Size = Field(parse_size("4G"), validation_alias="WORKSPACE_DEFAULT_MEMORY")
    default_disk: Size = Field(parse_size("10G"), validation_alias="WORKSPACE_DEFAULT_DISK")
    max_concurrent: int = Field(10, ge=1, validation_alias="WORKSPACE_MAX_CONCURRENT")
    # Named volumes (issue 30): the largest one may be, and how many one owner may hold.
    max_volume_size: Size = Field(parse_size("100G"), validation_alias="WORKSPACE_MAX_VOLUME_SIZE")
    max_volumes: int = Field(20, ge=0, le=10000, validation_alias="WORKSPACE_MAX_VOLUMES")
    # Snapshots an owner may keep (each holds a copy of a workspace's disk, sparse); a fork's counts while it runs.
    max_snapshots: int = Field(20, ge=0, validation_alias="WORKSPACE_MAX_SNAPSHOTS")
    warm_pool_size: int = Field(0, ge=0, validation_alias="WORKSPACE_WARM_POOL_SIZE")
    # Templates (issue 30): how many one owner may hold; builds under way at once on this server (a build past
    # it is a 429: builds have their own limit, apart from the cap on workspaces); the largest Dockerfile and
    # context archive (the context also rides in the JSON body, so WORKSPACE_MAX_REQUEST bounds it too); a
    # build's time, memory and CPU; each template's warm pool (a template's `pool_size` asks for one, at most this).
    max_templates: int = Field(20, ge=0, le=10000, validation_alias="WORKSPACE_MAX_TEMPLATES")
    max_builds: int = Field(2, ge=1, le=64, validation_alias="WORKSPACE_MAX_BUILDS")
    max_dockerfile: Size = Field(parse_size("64K"), validation_alias="WORKSPACE_MAX_DOCKERFILE")
    max_template_context: Size = Field(parse_size("4M"), validation_alias="WORKSPACE_MAX_TEMPLATE_CONTEXT")
    template_build_timeout: float = Field(600.0, gt=0, validation_alias="WORKSPACE_TEMPLATE_BUILD_TIMEOUT")
    template_build_memory: Size = Field(parse_size("2G"), validation_alias="WORKSPACE_TEMPLATE_BUILD_MEMORY")
    template_build_cpu: float = Field(1.0, gt=0, le=1024, validation_alias="WORKSPACE_TEMPLATE_BUILD_CPU")
    # What a build's steps may write in all (the gVisor builder: each RUN's layer measured as it runs, the step
    # killed past it); the engine's storage has no quota of its own on this host (overlay2 on ext4).
    template_build_disk: Size = Field(parse_size("8G"), validation_alias="WORKSPACE_TEMPLATE_BUILD_DISK")
    template_pool_size: int = Field(4, ge=0, le=64, validation_alias="WORKSPACE_TEMPLATE_POOL_SIZE")
    # Who runs a build's RUN steps: gvisor (each in a sandbox of the engine's runsc-build runtime, committed step by
    # step: providers/docker/gvisor_build.py; the engine's builder, under runc, when that runtime is missing) or
    # engine (the engine's builder, under runc; every Dockerfile feature, multi-stage builds too).
    template_builder: Literal["gvisor", "engine"] = Field("gvisor", validation_alias="WORKSPACE_TEMPLATE_BUILDER")
    default_ttl_days: float = Field(30, gt=0, validation_alias="WORKSPACE_DEFAULT_TTL_DAYS")
    network_name: str = Field("", validation_alias="WORKSPACE_NETWORK_NAME")
    e2b_api_key: SecretStr = Field(SecretStr(""), validation_alias="E2B_API_KEY")
    github_app_encryption_key: SecretStr = Field(SecretStr(""), validation_alias="GITHUB_APP_ENCRYPTION_KEY")
    # The previous key while a rotation is under way (`agentbox github rotate-key`).
    github_app_encryption_old_key: SecretStr = Field(SecretStr(""), validation_alias="GITHUB_APP_ENCRYPTION_OLD_KEY")
    # Hosts (`host` or `host:port`, comma-separated) a GitHub App's api_url may name although they resolve to
    # loopback or private addresses (a GitHub Enterprise Server inside the network), and the only ones allowed http.
    github_allowed_hosts: Annotated[
        tuple[Annotated[str, Field(pattern=r"^(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")], ...],
        NoDecode,
        BeforeValidator(_names),
    ] = Field((), validation_alias="GITHUB_API_ALLOWED_HOSTS")

    # agentbox's own.
    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias="WORKSPACE_DATA_DIR")
    database_url: str = Field("", validation_alias="WORKSPACE_DATABASE_URL")
    image: str = Field("agentbox/workspace:bookworm", min_length=1, validation_alias="WORKSPACE_IMAGE")
    api_keys: SecretStr = Field(SecretStr(""), validation_alias="WORKSPACE_API_KEYS")
    gvisor_runtime: str = Field("runsc", min_length=1, validation_alias="WORKSPACE_GVISOR_RUNTIME")
    # Probed when the gVisor runtime fails its probe: the same runsc on the ptrace platform, which
    # works wherever runsc does (slower). Empty: no gVisor fallback, straight to runc.
    gvisor_fallback_runtime: str = Field("runsc-ptrace", validation_alias="WORKSPACE_GVISOR_FALLBACK_RUNTIME")
    # Workspaces without network run under this runtime (runsc --network=none, registered by
    # scripts/setup-host.sh) when the engine has it and checkpoints (dockerd's "experimental"), so
    # that a pause keeps their memory. Empty: every pause keeps files only.
    gvisor_checkpoint_runtime: str = Field("runsc-nonet", validation_alias="WORKSPACE_GVISOR_CHECKPOINT_RUNTIME")
    probe_timeout: float = Field(20.0, gt=0, validation_alias="WORKSPACE_PROBE_TIMEOUT")
    # Seconds a call to the Docker engine may take before it counts as unanswered (a 503; a delete then
    # goes on in the background).
    engine_timeout: float = Field(120.0, gt=0, le=3600, validation_alias="WORKSPACE_ENGINE_TIMEOUT")
    # Processes and threads a workspace may run (under gVisor: its RLIMIT_NPROC; the host's pids
    # cgroup gets room for gVisor's own threads, see docs/runtime.md).
    pids_limit: int = Field(256, ge=64, le=65536, validation_alias="WORKSPACE_PIDS_LIMIT")
    user: str = Field("1000:1000", pattern=r"^\d+(:\d+)?$", validation_alias="WORKSPACE_USER")
    # How the server reaches the helper in each Docker workspace: "socket", the Unix socket in the data directory
    # (the server on the engine's host), or "tcp", a port in the workspace's network namespace that answers
    # only to whoever proves the workspace's key (derived from WORKSPACE_SECRET_KEY: every replica can). A
    # workspace with "network": "none" has no address and keeps the socket (docs/architecture.md).
    helper_channel: Literal["socket", "tcp"] = Field("socket", validation_alias="WORKSPACE_HELPER_CHANNEL")
    # The helper's TCP port in every workspace with a network under "tcp" (a workload cannot listen on it).
    helper_port: int = Field(7633, ge=1024, le=65535, validation_alias="WORKSPACE_HELPER_PORT")
    #: Egress policies by name (issue 29): the proxy and resolver on the workspace network's gateway.
    egress_proxy: bool = Field(True, validation_alias="WORKSPACE_EGRESS_PROXY")
    egress_proxy_port: int = Field(0, ge=0, le=65535, validation_alias="WORKSPACE_EGRESS_PROXY_PORT")
    egress_dns_port: int = Field(53, ge=1, le=65535, validation_alias="WORKSPACE_EGRESS_DNS_PORT")
    #: Where the resolver asks ("address" or "address:port", comma-separated); empty: the host's name servers.
    egress_upstream_dns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="WORKSPACE_EGRESS_UPSTREAM_DNS"
    )
    #: Extra CAs (PEM) the proxy trusts for the upstreams of intercepted connections (a corporate CA, a test's).
    egress_upstream_ca: Path | None = Field(None, validation_alias="WORKSPACE_EGRESS_UPSTREAM_CA")
    exec_output_limit: Size = Field(10 * 1024 * 1024, validation_alias="WORKSPACE_EXEC_OUTPUT_LIMIT")
    # Seconds a command may run when its request names no timeout (a runaway command ends some day).
    exec_timeout: float = Field(3600.0, gt=0, le=7 * 86400, validation_alias="WORKSPACE_EXEC_TIMEOUT")
    reap_interval: float = Field(30.0, gt=0, le=3600, validation_alias="WORKSPACE_REAP_INTERVAL")
    # Seconds a workspace may go unused (and not doing work) before its sandbox is frozen, when its create
    # names none; 0: never. Any use wakes it (workspaces/idle.py).
    idle_timeout: IdleTimeout = Field(300.0, validation_alias="WORKSPACE_IDLE_TIMEOUT")
    # Seconds between two looks for idle workspaces (by the leader).
    idle_check_interval: float = Field(2.0, gt=0, le=60, validation_alias="WORKSPACE_IDLE_CHECK_INTERVAL")
    # Cores a workspace may keep busy on average and still count as idle (an awake idle gVisor sandbox
    # uses ~0.03-0.05; a background job at work, a core or so).
    idle_cpu: float = Field(0.1, ge=0, le=64, validation_alias="WORKSPACE_IDLE_CPU")
    # Seconds between two measurements of every running workspace's CPU and memory (0: none).
    usage_interval: float = Field(10.0, ge=0, le=600, validation_alias="WORKSPACE_USAGE_INTERVAL")
    max_upload: Size = Field(parse_size("1G"), validation_alias="WORKSPACE_MAX_UPLOAD")
    # Every other request body (JSON: a create, an exec) is read into memory, so it is capped.
    max_request: Size = Field(parse_size("8M"), validation_alias="WORKSPACE_MAX_REQUEST")
    # The providers this server offers. Without gvisor and docker it never contacts a Docker engine.
    providers: Annotated[list[ProviderName], NoDecode, BeforeValidator(_names)] = Field(
        ["gvisor", "docker", "e2b"], min_length=1, validation_alias="WORKSPACE_PROVIDERS"
    )
    # The E2B template that stands for the default image (WORKSPACE_IMAGE) on the e2b provider.
    e2b_template: str = Field("base", min_length=1, max_length=256, validation_alias="WORKSPACE_E2B_TEMPLATE")
    # E2B's control-plane API under /e2b, for code written for E2B's SDK (E2B_API_URL=<server>/e2b).
    e2b_api: bool = Field(True, validation_alias="WORKSPACE_E2B_API")
    # The image behind E2B's `base` template on that endpoint (scripts/build-e2b-image.sh): E2B's user
    # `user`, uid 1000, home /home/user. Other templates name agentbox images.
    e2b_base_image: str = Field(
        "agentbox/e2b-base:bookworm", min_length=1, max_length=256, validation_alias="WORKSPACE_E2B_BASE_IMAGE"
    )
    # A domain with wildcard DNS onto this server (e.g. "preview.example.com"; best a registrable domain
    # of its own, apart from the dashboard's): a browser's preview of a port is its own origin,
    # http(s)://{port}-{workspace id}.{domain}/. Unset: {port}-{workspace id}.localhost:{the server's
    # port}, which browsers resolve to this machine themselves (one machine, no DNS).
    preview_domain: str = Field(
        "", pattern=r"^([A-Za-z0-9-]+\.)*[A-Za-z0-9-]+(:\d+)?$|^$", validation_alias="WORKSPACE_PREVIEW_DOMAIN"
    )
    # What is sent on to a server in a workspace (previews, E2B port traffic): a request body's bytes at
    # most (413 past them), and the WebSockets open at once per workspace and per caller (an API key's
    # owner, or a preview visitor's address): 429 past either. Each WebSocket holds a helper process in
    # the sandbox, so the per-workspace cap stays well under WORKSPACE_PIDS_LIMIT.
    max_proxied_body: Size = Field(parse_size("100M"), validation_alias="WORKSPACE_MAX_PROXIED_BODY")
    max_websockets_per_workspace: int = Field(
        100, ge=1, le=100_000, validation_alias="WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE"
    )
    max_websockets_per_caller: int = Field(
        500, ge=1, le=1_000_000, validation_alias="WORKSPACE_MAX_WEBSOCKETS_PER_CALLER"
    )
    # What workspaces that do not ask may reach (see docs/security.md).
    network_policy: Annotated[NetworkPolicy, NoDecode, BeforeValidator(_policy)] = Field(
        "egress", validation_alias="WORKSPACE_NETWORK_POLICY"
    )

    # This server's name among the replicas sharing WORKSPACE_DATABASE_URL (docs/architecture.md, "Replicas").
    # Fixed names (r1, r2, ...) let a restarted replica finish what its previous run left half-made at once.
    replica_id: str = Field(
        default_factory=_default_replica_id,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
        validation_alias="WORKSPACE_REPLICA_ID",
    )
    # Signs preview links, terminal and E2B tokens (at least 32 characters); replicas must share it.
    # Unset: one is made at the first start and kept in WORKSPACE_DATA_DIR/secret-key.
    secret_key: SecretStr = Field(SecretStr(""), validation_alias="WORKSPACE_SECRET_KEY")
    # Owners whose WORKSPACE_API_KEYS keys are admins (manage API keys). Empty: the first entry's owner.
    admins: Annotated[list[str], NoDecode, BeforeValidator(_names)] = Field([], validation_alias="WORKSPACE_ADMINS")
    # Refused credentials a client address may present per window before it is refused outright,
    # and calls per window on routes that need no API key (`limits` notation: "30/minute").
    rate_limit_failures: str = Field("30/minute", validation_alias="WORKSPACE_RATE_LIMIT_FAILURES")
    rate_limit_anonymous: str = Field("1200/minute", validation_alias="WORKSPACE_RATE_LIMIT_ANONYMOUS")

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value()) < 32:
            raise ValueError(
                "must be at least 32 characters (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value

    @field_validator("rate_limit_failures", "rate_limit_anonymous")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            parse_rate(value)
        except ValueError:
            raise ValueError('must be a rate such as "30/minute" or "5/second"') from None
        return value

    @property
    def admin_owners(self) -> frozenset[str]:
        """Owners whose keys from WORKSPACE_API_KEYS are admins."""
        if self.admins:
            return frozenset(self.admins)
        first = next(iter(self.owners_by_key.values()), None)
        return frozenset([first] if first else [])

    @model_validator(mode="after")
    def _default_is_offered(self) -> Settings:
        if self.default_provider not in self.providers:
            raise ValueError(
                f"WORKSPACE_DEFAULT_PROVIDER={self.default_provider} is not in WORKSPACE_PROVIDERS="
                f"{','.join(self.providers)}: add it there, or choose one of those as the default"
            )
        return self

    @property
    def uses_docker(self) -> bool:
        return bool({"gvisor", "docker"} & set(self.providers))

    @field_validator("egress_upstream_dns", mode="before")
    @classmethod
    def _upstreams(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("network_name")
    @classmethod
    def _network_name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("must be a Docker network name (letters, digits, '_', '.', '-')")
        return value

    @field_validator("github_app_encryption_key", "github_app_encryption_old_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            parse_key(value.get_secret_value())
        return value

    @property
    def keyring(self) -> Keyring | None:
        """Seals and opens GitHub App secrets; None when GITHUB_APP_ENCRYPTION_KEY is not set."""
        current, old = self.github_app_encryption_key.get_secret_value(), self.github_app_encryption_old_key
        if not current:
            return None
        return Keyring(parse_key(current), *([parse_key(old.get_secret_value())] if old.get_secret_value() else []))

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())
        return value

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            # SQLAlchemy's plain "postgresql://" means psycopg2; we ship psycopg 3.
            if self.database_url.startswith("postgresql://"):
                return "postgresql+psycopg://" + self.database_url.removeprefix("postgresql://")
            return self.database_url
        return f"sqlite:///{self.data_dir / 'agentbox.db'}"

    @property
    def instance_id(self) -> str:
        """Names this deployment's sandboxes on a shared engine: the same database, the same instance."""
        url = make_url(self.sqlalchemy_url).render_as_string(hide_password=True)
        return hashlib.sha256(url.encode()).hexdigest()[:12]

    @property
    def owners_by_key(self) -> dict[str, str]:
        return parse_api_keys(self.api_keys.get_secret_value())

    def keys_of(self, owner: str) -> list[str]:
        """Every API key of `owner` (what tokens made for their workspaces may be signed with)."""
        return [key for key, key_owner in self.owners_by_key.items() if key_owner == owner]


def parse_api_keys(text: str) -> dict[str, str]:
    """`owner:key,owner2:key2` -> {key: owner}. Errors never repeat a key."""
    keys: dict[str, str] = {}
    for position, pair in enumerate(filter(None, (p.strip() for p in text.split(","))), start=1):
        owner, sep, key = pair.partition(":")
        if not sep or not owner or not key:
            raise ValueError(f"entry {position} is not of the form owner:key")
        if not _OWNER.match(owner):
            raise ValueError(f"entry {position}: owner {owner!r} may use only letters, digits and _ . @ -")
        if len(key) < 16:
            raise ValueError(f"entry {position} (owner {owner!r}): the key must be at least 16 characters")
        if key in keys:
            raise ValueError(f"entry {position} (owner {owner!r}) repeats a key given earlier")
        keys[key] = owner
    return keys


_SECRET_VARIABLES = {
    "E2B_API_KEY",
    "GITHUB_APP_ENCRYPTION_KEY",
    "GITHUB_APP_ENCRYPTION_OLD_KEY",
    "WORKSPACE_API_KEYS",
    "WORKSPACE_SECRET_KEY",
}


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once; turn pydantic's errors into one message per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            variable = ".".join(str(part) for part in error["loc"]) or "settings"
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a rule across variables: its message names them
                lines.append(message)
            elif variable in _SECRET_VARIABLES:
                lines.append(f"{variable}: {message}")
            else:
                lines.append(f"{variable}={error.get('input')!s}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
