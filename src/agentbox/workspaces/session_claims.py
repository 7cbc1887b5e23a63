"""Shell sessions' state shared by the replicas, in the database (table `session_claims`).

A session's shell lives in its workspace, so any replica can write a command to its stdin and read
its output; what must be shared is what a replica would otherwise keep in its memory:

- `read_to`: where the session's output was read up to. The next command's output starts there;
  a replica with a stale offset would hand one command's output to another.
- `holder` and `until`: which replica runs a command in the session now. One command at a time,
  whichever replica it came through: a second one is a 409. The holder renews `until` while its
  command runs; a claim past `until` is free again, so a replica that died mid-command holds the
  session for LEASE at most.
- `nonce`: the end marker of a command written to the shell whose end has not been read. A
  holder that dies after writing its command leaves it behind; the next holder reads (and
  discards) the output up to that marker before its own command's, so that it never returns the
  dead replica's output as its own.

Each change is one guarded UPDATE (or an INSERT that does nothing when the row exists), so two
replicas can never both hold a session, on PostgreSQL and on SQLite alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from agentbox.db.models import SessionClaim, Workspace, utcnow
from agentbox.db.store import LIVE, Store
from agentbox.errors import Conflict

#: How long a claim holds without being renewed: the longest a session stays busy after its
#: holder died mid-command.
LEASE = timedelta(seconds=30)
#: Seconds between renewals of a claim while its command runs (a third of the lease: two may fail).
RENEW_EVERY = LEASE.total_seconds() / 3


@dataclass(frozen=True)
class Claim:
    """A session just claimed: where its output was read up to (None: no replica has recorded it), and
    the end marker of a command another holder wrote and never finished reading (None: there is none)."""

    read_to: int | None
    pending: str | None


class SessionClaims:
    """The `session_claims` rows, as seen by replica `holder`."""

    def __init__(self, store: Store, holder: str, lease: timedelta = LEASE) -> None:
        self.store = store
        self.holder = holder
        self.lease = lease

    def take(self, workspace_id: str, pid: int, nonce: str) -> Claim:
        """Hold the session for one command whose end marker is `nonce`. Conflict while another holds it.

        When the returned claim has no `pending` and knows `read_to`, `nonce` is recorded as the
        command's marker already; otherwise `begin` records it once the caller knows where its
        output starts."""
        free = _free(workspace_id, pid)
        until = utcnow() + self.lease
        with self.store.session() as session:
            # The usual case, one statement: an idle session whose last command was read to its end.
            idle = session.execute(
                update(SessionClaim)
                .where(free, SessionClaim.nonce.is_(None), SessionClaim.read_to.is_not(None))
                .values(holder=self.holder, until=until, nonce=nonce)
                .returning(SessionClaim.read_to)
            ).first()
        if idle is not None:
            return Claim(read_to=idle[0], pending=None)
        with self.store.session() as session:
            taken = session.execute(
                update(SessionClaim)
                .where(free)
                .values(holder=self.holder, until=until)
                .returning(SessionClaim.read_to, SessionClaim.nonce)
            ).first()
        if taken is not None:
            read_to, pending = taken
            if read_to is not None and pending is None:  # released between the two statements
                self.begin(workspace_id, pid, nonce, read_to)
            return Claim(read_to=read_to, pending=pending if read_to is not None else None)
        with self.store.session() as session:
            inserted = _changed(
                session, self._insert_if_absent(workspace_id=workspace_id, pid=pid, holder=self.holder, until=until)
            )
        if inserted:
            return Claim(read_to=None, pending=None)
        raise Conflict(f"session {pid} is running a command: wait for it, or open another session")

    def begin(self, workspace_id: str, pid: int, nonce: str, read_to: int) -> None:
        """Record, for a session this replica holds, where the next command's output starts and its marker."""
        self._set(workspace_id, pid, read_to=read_to, nonce=nonce)

    def renew(self, workspace_id: str, pid: int) -> bool:
        """Hold the session for another lease; False if this replica no longer holds it."""
        return self._set(workspace_id, pid, until=utcnow() + self.lease)

    def release(self, workspace_id: str, pid: int, read_to: int | None, pending: str | None) -> None:
        """Let the session go. `read_to`: where its output has been read up to now (None: where it was);
        `pending`: the marker of a command written to its shell whose end was not read (None: none)."""
        fields: dict[str, Any] = {"holder": None, "until": None, "nonce": pending}
        if read_to is not None:
            fields["read_to"] = read_to
        self._set(workspace_id, pid, **fields)

    def fresh(self, workspace_id: str, pid: int, nonce: str) -> None:
        """A session just started, held by this replica for its first command (marker `nonce`), its output
        unread. Whatever a row said about an earlier process with the same PID no longer holds."""
        with self.store.session() as session:
            session.execute(delete(SessionClaim).where(_row(workspace_id, pid)))
            session.execute(
                insert(SessionClaim).values(
                    workspace_id=workspace_id,
                    pid=pid,
                    holder=self.holder,
                    until=utcnow() + self.lease,
                    read_to=0,
                    nonce=nonce,
                )
            )

    def forget(self, workspace_id: str, pid: int | None = None) -> None:
        """Drop what is known of a session that ended (or, without `pid`, of every session of the workspace:
        its processes ended, or it is gone)."""
        where = SessionClaim.workspace_id == workspace_id if pid is None else _row(workspace_id, pid)
        with self.store.session() as session:
            session.execute(delete(SessionClaim).where(where))

    def sweep(self) -> int:
        """Drop the rows of workspaces that are gone (deleted, expired, vanished); how many."""
        live = select(Workspace.id).where(Workspace.status.in_(LIVE))
        with self.store.session() as session:
            return _changed(session, delete(SessionClaim).where(SessionClaim.workspace_id.not_in(live)))

    def get(self, workspace_id: str, pid: int) -> SessionClaim | None:
        with self.store.session() as session:
            return session.get(SessionClaim, (workspace_id, pid))

    def _set(self, workspace_id: str, pid: int, **fields: Any) -> bool:
        mine = (_row(workspace_id, pid), SessionClaim.holder == self.holder)
        with self.store.session() as session:
            return bool(_changed(session, update(SessionClaim).where(*mine).values(**fields)))

    def _insert_if_absent(self, **values: Any) -> Any:
        dialect = self.store.engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(SessionClaim).values(**values).on_conflict_do_nothing()
        if dialect == "sqlite":
            return sqlite.insert(SessionClaim).values(**values).on_conflict_do_nothing()
        raise NotImplementedError(
            f"session claims on {dialect}: agentbox supports PostgreSQL and SQLite; set WORKSPACE_DATABASE_URL to a "
            "postgresql:// or sqlite:// URL"
        )


def _changed(session: Session, statement: Any) -> int:
    """How many rows `statement` (an INSERT, UPDATE or DELETE of session_claims) changed: counted from RETURNING,
    since psycopg's rowcount of an INSERT ... ON CONFLICT DO NOTHING says -1 either way."""
    return len(session.execute(statement.returning(SessionClaim.pid)).all())


def _row(workspace_id: str, pid: int) -> ColumnElement[bool]:
    return (SessionClaim.workspace_id == workspace_id) & (SessionClaim.pid == pid)


def _free(workspace_id: str, pid: int) -> ColumnElement[bool]:
    """The session's row, unheld or held past its lease."""
    unheld = or_(SessionClaim.holder.is_(None), SessionClaim.until.is_(None), SessionClaim.until < utcnow())
    return _row(workspace_id, pid) & unheld
