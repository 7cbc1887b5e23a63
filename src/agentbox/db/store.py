"""The database: one engine, schema migrations at start-up, and the queries the manager needs."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from agentbox.db.models import AuditRecord, Event, Status, Workspace, utcnow

#: Counted against WORKSPACE_MAX_CONCURRENT.
ACTIVE = (Status.STARTING.value, Status.RUNNING.value)
#: Owned workspaces that still exist (or may still hold resources).
LIVE = (Status.STARTING.value, Status.RUNNING.value, Status.STOPPED.value, Status.FAILED.value)
#: The PostgreSQL advisory lock under which workspaces are admitted (any fixed number will do).
ADMISSION_LOCK = 0x61676278


class Store:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._admission = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is already there)."""
        config = Config()
        config.set_main_option("script_location", str(resources.files("agentbox.db") / "migrations"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Hold the admission lock: counting the active workspaces and adding one happen under it.

        On PostgreSQL it is an advisory lock in the database, so the cap holds across every server
        process that shares it; SQLite serves one process, where a thread lock is the same. Only
        database work belongs under it: name lookups and engine calls happen before or after.
        """
        with self._admission:
            if self.engine.dialect.name != "postgresql":
                yield
                return
            with self.engine.connect() as connection:
                connection.execute(select(func.pg_advisory_lock(ADMISSION_LOCK)))
                try:
                    yield
                finally:
                    connection.execute(select(func.pg_advisory_unlock(ADMISSION_LOCK)))
                    connection.commit()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def add(self, workspace: Workspace, event_kind: str, **detail: Any) -> Workspace:
        with self.session() as session:
            session.add(workspace)
            session.flush()
            session.add(Event(workspace_id=workspace.id, kind=event_kind, detail=detail))
        return workspace

    def get(self, workspace_id: str) -> Workspace | None:
        with self.session() as session:
            return session.get(Workspace, workspace_id)

    def find(self, owner: str | None = None, statuses: Sequence[str] | None = None) -> list[Workspace]:
        query = select(Workspace).order_by(Workspace.created_at)
        if owner is not None:
            query = query.where(Workspace.owner == owner)
        if statuses is not None:
            query = query.where(Workspace.status.in_(list(statuses)))
        with self.session() as session:
            return list(session.scalars(query))

    def update(self, workspace_id: str, event_kind: str | None = None, **fields: Any) -> Workspace:
        """Set `fields` on the row and, when `event_kind` is given, record the change."""
        updated = self.transition(workspace_id, None, event_kind, **fields)
        if updated is None:
            raise KeyError(workspace_id)
        return updated

    def transition(
        self, workspace_id: str, expected: Sequence[str] | None, event_kind: str | None = None, **fields: Any
    ) -> Workspace | None:
        """`update`, but only while the row's status is one of `expected`; None if it was not.

        Background work (the reaper, the pool, reconciliation) uses it so that it never
        overwrites what a request did in the meantime, such as a delete.
        """
        with self.session() as session:
            workspace = session.get(Workspace, workspace_id, with_for_update=expected is not None)
            if workspace is None or (expected is not None and workspace.status not in expected):
                return None
            for name, value in fields.items():
                setattr(workspace, name, value)
            workspace.updated_at = utcnow()
            if event_kind is not None:
                detail = {k: v for k, v in fields.items() if k in ("status", "error", "provider_ref", "owner", "repo")}
                session.add(Event(workspace_id=workspace_id, kind=event_kind, detail=detail))
        return workspace

    def retire(
        self, workspace_id: str, event_kind: str, reason: str | None = None, expected: Sequence[str] | None = None
    ) -> Workspace | None:
        """Mark the row deleted (hidden from the API, kept for its audit trail) with why, as `event_kind`.

        With `expected`, only while its status is one of those (see `transition`); None if it was not.
        """
        return self.transition(
            workspace_id, expected, event_kind, status=Status.DELETED.value, error=reason, deleted_at=utcnow()
        )

    def record(self, workspace_id: str, event_kind: str, **detail: Any) -> None:
        """Add an event to a workspace's audit trail."""
        with self.session() as session:
            session.add(Event(workspace_id=workspace_id, kind=event_kind, detail=detail))

    def claim(self, match: Mapping[str, Any], **fields: Any) -> Workspace | None:
        """Give the oldest ready pooled row whose columns equal `match` the `fields`; None if there is none.

        One guarded UPDATE ... RETURNING, so a claim costs one round trip and can never take
        a row that something else changed meanwhile.
        """
        pooled = Workspace.status == Status.POOLED.value
        oldest = (
            select(Workspace.id)
            .where(pooled, Workspace.provider_ref.is_not(None), *(getattr(Workspace, k) == v for k, v in match.items()))
            .order_by(Workspace.created_at)
            .limit(1)
            .scalar_subquery()
        )
        statement = update(Workspace).where(Workspace.id == oldest, pooled).values(updated_at=utcnow(), **fields)
        with self.session() as session:
            claimed = session.scalars(statement.returning(Workspace)).first()
            if claimed is not None:
                session.add(Event(workspace_id=claimed.id, kind="claimed", detail={"owner": fields.get("owner")}))
        return claimed

    def awake_candidates(self) -> list[Workspace]:
        """Running workspaces that are awake and may be suspended (an idle timeout other than 0)."""
        query = select(Workspace).where(
            Workspace.status == Status.RUNNING.value,
            Workspace.provider_ref.is_not(None),
            Workspace.suspended_at.is_(None),
            or_(Workspace.idle_timeout.is_(None), Workspace.idle_timeout > 0),
        )
        with self.session() as session:
            return list(session.scalars(query))

    def mark_suspended(self, workspace: Workspace, at: datetime) -> bool:
        """Mark `workspace` suspended, only if it is still as it was read: awake, in its status, and with no
        activity since (`active_at`). The one round trip that makes a concurrent use win over a suspend."""
        unchanged = (
            Workspace.active_at.is_(None) if workspace.active_at is None else Workspace.active_at == workspace.active_at
        )
        statement = (
            update(Workspace)
            .where(
                Workspace.id == workspace.id,
                Workspace.status == workspace.status,
                Workspace.suspended_at.is_(None),
                unchanged,
            )
            .values(suspended_at=at)
            .returning(Workspace.id)
        )
        with self.session() as session:
            marked = session.scalar(statement) is not None
            if marked:
                session.add(Event(workspace_id=workspace.id, kind="suspended", detail={}))
        return marked

    def mark_awake(self, workspace_id: str, activity: Mapping[str, Any]) -> Workspace | None:
        """Clear the workspace's suspension, set `activity` (its active_at, and what else the wake's caller
        records), and return it; None when it was not suspended (or another caller cleared it first: exactly
        one of concurrent callers gets the row)."""
        statement = (
            update(Workspace)
            .where(Workspace.id == workspace_id, Workspace.suspended_at.is_not(None))
            .values(suspended_at=None, **activity)
            .returning(Workspace)
        )
        with self.session() as session:
            woken = session.scalars(statement).first()
            if woken is not None:
                session.add(Event(workspace_id=workspace_id, kind="woken", detail={}))
        return woken

    def touch(self, workspace_ids: Sequence[str], at: datetime) -> None:
        """Mark the workspaces active at `at` (calls into them are in flight)."""
        statement = update(Workspace).where(Workspace.id.in_(list(workspace_ids))).values(active_at=at)
        with self.session() as session:
            session.execute(statement)

    def count_running(self, suspended: bool) -> int:
        """Running workspaces that are suspended, or awake."""
        asleep = Workspace.suspended_at.is_not(None) if suspended else Workspace.suspended_at.is_(None)
        with self.session() as session:
            return session.scalar(select(func.count()).where(Workspace.status == Status.RUNNING.value, asleep)) or 0

    def count_active(self) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).where(Workspace.status.in_(ACTIVE))) or 0

    def active_of(self, owner: str) -> tuple[int, float, int]:
        """`owner`'s active workspaces: how many, their CPUs and their memory (bytes) together."""
        query = select(
            func.count(), func.coalesce(func.sum(Workspace.cpu), 0.0), func.coalesce(func.sum(Workspace.memory), 0)
        )
        with self.session() as session:
            count, cpus, memory = session.execute(
                query.where(Workspace.owner == owner, Workspace.status.in_(ACTIVE))
            ).one()
        return int(count), float(cpus), int(memory)

    def count_active_by_provider(self) -> dict[str, int]:
        """Active workspaces (every owner's) per provider name; providers with none are left out."""
        query = (
            select(Workspace.provider, func.count()).where(Workspace.status.in_(ACTIVE)).group_by(Workspace.provider)
        )
        with self.session() as session:
            return {provider: count for provider, count in session.execute(query).all()}

    def expired(self, now: datetime) -> list[Workspace]:
        """Ephemeral workspaces whose time is up, in any state but deleted."""
        query = (
            select(Workspace)
            .where(Workspace.expires_at <= now)
            .where(Workspace.ephemeral.is_(True))
            .where(Workspace.status.in_(LIVE))
        )
        with self.session() as session:
            return list(session.scalars(query))

    def events(self, workspace_id: str) -> list[Event]:
        query = select(Event).where(Event.workspace_id == workspace_id).order_by(Event.id)
        with self.session() as session:
            return list(session.scalars(query))

    def add_audit(self, records: Sequence[AuditRecord]) -> None:
        with self.session() as session:
            session.add_all(records)

    def audit(self, workspace_id: str, limit: int, before: int | None = None) -> list[AuditRecord]:
        """The newest `limit` audit records of a workspace (older than record `before`, if given)."""
        query = select(AuditRecord).where(AuditRecord.workspace_id == workspace_id)
        if before is not None:
            query = query.where(AuditRecord.id < before)
        with self.session() as session:
            return list(session.scalars(query.order_by(AuditRecord.id.desc()).limit(limit)))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run while a create is being written; the server is one process.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL never corrupts the database; a power cut may lose the last commits,
    # which reconciliation then repairs against the engine. It saves an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
