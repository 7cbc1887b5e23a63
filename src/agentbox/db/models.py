"""What agentbox persists: workspaces, the events that happened to them, and the calls made on them (audit).

The schema is owned by the Alembic migrations in `agentbox/migrations`; these classes
must match them (a unit test compares the two).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Re-exported: the server's modules know it from here; the API's bodies take it from domain.
from agentbox.wire.domain import Status as Status


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every database (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: agentbox stores UTC only")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_workspace_id() -> str:
    # Also the container's hostname, so only [a-z0-9-].
    return "ws-" + secrets.token_hex(8)


def new_app_id() -> str:
    return "gh-" + secrets.token_hex(8)


def new_secret_id() -> str:
    # E2B's form (its API reserves the sec_ prefix for identifiers, so no name looks like one); random,
    # not derived from the owner or the name.
    return "sec_" + secrets.token_hex(16)


def new_volume_id() -> str:
    return "vol-" + secrets.token_hex(8)


def new_snapshot_id() -> str:
    return "snap-" + secrets.token_hex(8)


def new_template_id() -> str:
    return "tpl-" + secrets.token_hex(8)


def new_key_id() -> str:
    # Random, never derived from the key: it travels in tokens, which must say nothing about the key.
    return "key-" + secrets.token_hex(8)


class Base(DeclarativeBase):
    pass


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    image: Mapped[str] = mapped_column(String(512))
    cpu: Mapped[float] = mapped_column(Float)
    memory: Mapped[int] = mapped_column(BigInteger)
    disk: Mapped[int] = mapped_column(BigInteger)
    pids_limit: Mapped[int] = mapped_column(Integer)
    ephemeral: Mapped[bool]
    ttl_days: Mapped[float | None] = mapped_column(Float)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # The Docker network it is attached to ("none": loopback only).
    network: Mapped[str] = mapped_column(String(128), default="")
    # Its allow list as asked (None: the public internet), and the CIDRs that list resolved to.
    allow: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    allow_cidrs: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    # Its egress policy (egress/rules.py Policy, as JSON; None: "egress" or "none", as `network` says).
    egress: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # The repository checked out at create: {"repository", "ref", "app", "installation_id", "path"}.
    repo: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # The provider's own handle (a container name for Docker, a sandbox id for E2B).
    provider_ref: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # to USE_RECORDED_EVERY
    # Its ports answer in the preview host form without a token (E2B's public sandbox URLs).
    public_ports: Mapped[bool] = mapped_column(default=False)
    # The Host its ports' apps are sent, `${PORT}` in it (E2B's maskRequestHost); None: localhost:<port>.
    request_host: Mapped[str | None] = mapped_column(String(259), default=None)
    # Whether its last pause kept its memory and processes (a checkpoint); None: never paused.
    memory_kept: Mapped[bool | None] = mapped_column(default=None)
    # Paused instead of deleted at its fixed end (E2B's lifecycle): PauseAtEnd's fields, and the
    # `seconds` an automatic resume gives it. None: deleted at its end.
    pause_at_end: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Seconds unused (and not doing work) after which it is suspended; 0: never. None: made before
    # idle suspend (the server's WORKSPACE_IDLE_TIMEOUT).
    idle_timeout: Mapped[float | None] = mapped_column(Float)
    # Its last call into the sandbox, a look or a use, or a call still in flight (to a fraction of its idle
    # timeout): what idle suspend counts from (last_used_at, which slides the TTL, counts only uses).
    active_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When its sandbox was frozen (workspaces/idle.py); None: awake. A suspended one is `running`.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The replica creating or starting it while it is `starting`, or booting it into the warm pool:
    # only that replica's death (its heartbeat gone stale) lets reconciliation give the row up.
    replica: Mapped[str | None] = mapped_column(String(64))
    # The owner's volumes mounted into it: [{"volume": "vol-...", "path": "/mnt/data", "read_only": false}].
    volumes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True), default=None)
    # The snapshot it was made from (its files, and its memory where the snapshot kept it).
    snapshot_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Volume(Base):
    """A named persistent volume of an owner's: a disk of `size` bytes that outlives the workspaces using it."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_volume_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Snapshot(Base):
    """A workspace's state at one moment, an owner's: its files always, its memory and processes where the
    provider could keep them (`memory_kept`); workspaces are made from it as from an image."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_snapshot_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(64), default=None)  # NULLs are not equal: many unnamed
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)  # the source; it may be gone since
    provider: Mapped[str] = mapped_column(String(32))
    # Where the provider keeps it (a directory of the Docker provider's, say).
    provider_ref: Mapped[str] = mapped_column(String(256))
    # What a workspace made from it is given unless the create says otherwise: image, cpu, memory, disk,
    # pids_limit, env, labels, the network columns.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    memory_kept: Mapped[bool] = mapped_column(default=False)
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes it takes on the host
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Template(Base):
    """An owner's workspace image built from a Dockerfile, with the command a workspace made from it starts and
    the one that says it is ready; versioned by name and tag."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("owner", "name", "tag"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_template_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(String(64))
    # The engine's name for the image (unique per template: workspaces made from it carry it as their image).
    image: Mapped[str] = mapped_column(String(256))
    image_id: Mapped[str | None] = mapped_column(String(128), default=None)  # once built
    start_cmd: Mapped[str | None] = mapped_column(Text, default=None)
    ready_cmd: Mapped[str | None] = mapped_column(Text, default=None)
    ready_timeout: Mapped[float] = mapped_column(Float, default=60.0)
    pool_size: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)  # building, ready, failed
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # The build's log, its last TEMPLATE_LOG_KEPT characters; log_size counts every character ever written, so
    # a follower knows where the kept part starts.
    log: Mapped[str] = mapped_column(Text, default="")
    log_size: Mapped[int] = mapped_column(BigInteger, default=0)
    replica: Mapped[str | None] = mapped_column(String(64), default=None)  # the one building it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    built_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class GitHubApp(Base):
    """A GitHub App registration. Its secrets are sealed (github/crypto.py), bound to this row."""

    __tablename__ = "github_apps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    app_id: Mapped[int] = mapped_column(BigInteger)
    api_url: Mapped[str] = mapped_column(String(512))
    #: Where its repositories are served; None: derived from api_url (github.com, or the Enterprise Server itself).
    git_url: Mapped[str | None] = mapped_column(String(512))
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    webhook_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Secret(Base):
    """A secret of an owner's, for the egress proxy to put into requests (vault/). Its value is sealed
    (github/crypto.py), bound to this owner and name."""

    __tablename__ = "secrets"

    # The primary key is what makes a name unique per owner.
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What E2B's Secrets API answers about it (e2b_api/secrets.py): an identifier that names it apart
    # from its name, the version its value is at (1, one more at each replacement) and free metadata.
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True, default=new_secret_id)
    version: Mapped[int] = mapped_column(Integer, default=1)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


class ApiKey(Base):
    """An API key: whose it is, what it may do, and whether it still works. Only its SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256 of the secret
    admin: Mapped[bool] = mapped_column(default=False)
    # Where it came from: "env" (WORKSPACE_API_KEYS, kept in step at each start) or "api".
    source: Mapped[str] = mapped_column(String(8))
    # Quotas over the owner's active workspaces while this key asks (None: only the server's cap).
    max_workspaces: Mapped[int | None] = mapped_column(Integer)
    max_cpus: Mapped[float | None] = mapped_column(Float)
    max_memory: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class Event(Base):
    """An audit trail: what happened to a workspace, when, and on whose behalf."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuditRecord(Base):
    """One call of the API on a workspace: who, what (with its arguments summarized), how it ended."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)  # kept after the workspace is deleted
    owner: Mapped[str | None] = mapped_column(String(64))  # None: the caller was not authenticated
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)


class Replica(Base):
    """A server process sharing the database: alive while its heartbeat is fresh."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str | None] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Lease(Base):
    """A named lease (the leader's): held by one replica until it expires or is renewed."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UsageSampleRow(Base):
    """One measurement of a running workspace, taken by the leader and read by every replica (usage.py)."""

    __tablename__ = "usage_samples"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    workspace_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    cpu: Mapped[float | None] = mapped_column(Float)  # cores busy since the sample before (None: the first)
    memory: Mapped[int] = mapped_column(BigInteger)
    disk: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # bytes written (None: not measured)


class SessionClaim(Base):
    """A shell session's state shared by the replicas: where its output was read up to, and which
    replica runs a command in it now (`holder`, until `until`; None: idle). `nonce`: the end marker
    of the command written to its shell whose end nobody has read yet (see agentbox.workspaces.session_claims)."""

    __tablename__ = "session_claims"

    workspace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    read_to: Mapped[int | None] = mapped_column(BigInteger)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    nonce: Mapped[str | None] = mapped_column(String(32))


class WatchCursor(Base):
    """A directory watcher that outlives its call (agentbox.workspaces.watchers): the PID of its watch
    in the workspace, the directory it watches, and where its events were read up to, shared by the
    replicas so that each event is handed out once, through whichever replica is asked."""

    __tablename__ = "watch_cursors"

    workspace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    read_to: Mapped[int] = mapped_column(BigInteger)
