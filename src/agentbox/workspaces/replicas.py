"""Several replicas on one database: who is alive (heartbeats), who leads (a lease), and nudges between them.

Every server process is a replica with an id (WORKSPACE_REPLICA_ID). It writes its heartbeat into
`replicas` every HEARTBEAT_SECONDS; one whose heartbeat is older than REPLICA_TIMEOUT is dead, and
what it was making (its `starting` rows, its half-booted pool workspaces) may be given up by the
leader. The leader is the holder of the lease named "leader" in `leases`: taken for LEASE_SECONDS,
renewed every RENEW_SECONDS, taken over by another replica once it has expired. Only the leader does
the background work that must happen once (background.py: expiry, reconciliation, isolation, the warm
pool; usage.py: sampling). On SQLite there is one replica, which takes the lease at its start.

Every time compared between replicas is the database's (PostgreSQL's `clock_timestamp()`), never a
process's: replicas on several hosts may disagree by seconds, and the lease and the heartbeats are
counted in seconds. The one process-side measure is how long this replica may still act as leader:
its monotonic clock from just before it took or renewed the lease, plus the lease's length less a
margin, which ends before the lease does in the database whatever the process's wall clock says. So a
replica that cannot renew (a database outage, a stalled thread) stops leader work before anyone else
may start it. On SQLite the database runs inside this process, so its clock is the process's.

On PostgreSQL, replicas nudge each other with NOTIFY on one channel: a claim or a delete on any
replica wakes the leader's pool refill at once (rather than at its next round), and a lease given up
at shutdown is taken over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from agentbox.db.models import Lease, utcnow
from agentbox.db.models import Replica as ReplicaRow
from agentbox.db.store import Store

log = logging.getLogger("agentbox.workspaces.replicas")

#: How often a replica writes its heartbeat.
HEARTBEAT_SECONDS = 2.0
#: A replica whose heartbeat is older than this is dead: five missed beats.
REPLICA_TIMEOUT = 10.0
#: How long the leader's lease lasts from its last renewal, and how often it is renewed.
LEASE_SECONDS = 15.0
RENEW_SECONDS = 5.0
#: This much before its lease ends in the database, a leader stops acting as one (scheduling slack).
LEASE_MARGIN = 1.0
#: Rows of replicas silent this long are deleted by the leader (nothing of theirs is left by then).
FORGET_SECONDS = 3600.0
LEADER = "leader"
#: The NOTIFY channel; payloads are "<kind> <replica id>".
CHANNEL = "agentbox_replicas"


class ReplicaIdInUse(Exception):
    """Another live process runs under this replica's id."""


def database_now(session: Session) -> datetime:
    """The database's clock (see the module's docstring), as an aware UTC datetime."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.clock_timestamp()))
        assert isinstance(now, datetime)
        return now.astimezone(UTC)
    return utcnow()


def _changed(session: Session, statement: Executable) -> int:
    """Rows an UPDATE, DELETE or INSERT changed."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


class Replica:
    """This process among the replicas: its heartbeat, its bid for the lease, and the nudges.

    `join()` registers it and starts its thread; `leads()` says, at any moment, whether it may do the
    leader's work; `leave()` ends it all. `tick()` is one round of the thread (tests call it alone,
    with `clock` standing for the database's and `monotonic` for the process's).
    """

    def __init__(
        self,
        store: Store,
        replica_id: str,
        address: str | None = None,
        *,
        clock: Callable[[Session], datetime] = database_now,
        monotonic: Callable[[], float] = time.monotonic,
        heartbeat: float = HEARTBEAT_SECONDS,
        timeout: float = REPLICA_TIMEOUT,
        lease: float = LEASE_SECONDS,
        renew: float = RENEW_SECONDS,
        alone: bool | None = None,
    ) -> None:
        """`alone`: the only process on this database, so any other replica in the tables is a past run of the
        server (default: on SQLite, which serves one process; tests of several replicas over SQLite say no)."""
        self.store = store
        self.id = replica_id
        self.address = address
        self.heartbeat, self.timeout, self.lease, self.renew = heartbeat, timeout, lease, renew
        self._clock = clock
        self._monotonic = monotonic
        self._started_at: datetime | None = None
        self._lease_until = float("-inf")  # monotonic: it may act as leader until then
        self._renew_at = float("-inf")
        self._was_leading = False
        self._displaced = False
        self._left_last = False  # whether no other replica was alive when this one left
        self._leader: str | None = None
        self._alive: list[str] = []
        self._stop = threading.Event()
        self._tick_now = threading.Event()
        self._outbox: set[str] = set()
        self._outbox_ready = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Called (from this replica's threads) when it starts or stops leading, and when another replica
        #: nudges it: the lifecycle loop's wake-up.
        self.on_change: Callable[[], None] = lambda: None
        self._postgres = store.engine.dialect.name == "postgresql"
        self._alone = not self._postgres if alone is None else alone

    # Joining and leaving

    def join(self) -> None:
        """Register, bid for the lease once (a lone replica leads before it serves), start the thread."""
        self.register()
        self.tick()
        targets: list[tuple[str, Callable[[], None]]] = [("agentbox-replica", self._run)]
        if self._postgres:
            targets += [("agentbox-replica-listen", self._listen), ("agentbox-replica-notify", self._send)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def register(self) -> None:
        """Enter the replicas table; ReplicaIdInUse when another live process has this id.

        A fresh heartbeat under this id is this replica's previous run, dead a moment ago, or another
        process configured with the same id: a live one beats again within a heartbeat or two, so it
        is watched that long before the id is taken over. Only then may this run give up what its
        previous one left half-made (reconcile.py), without touching another process's work.
        """
        with self.store.session() as session:
            now = self._clock(session)
            row = session.get(ReplicaRow, self.id)
            seen = row.heartbeat_at if row is not None else None
        if seen is not None and (now - seen).total_seconds() < self.timeout:
            deadline = self._monotonic() + 2 * self.heartbeat + 1
            while self._monotonic() < deadline:
                self._stop.wait(min(0.25, self.heartbeat / 4))
                with self.store.session() as session:
                    row = session.get(ReplicaRow, self.id)
                    if row is not None and row.heartbeat_at != seen:
                        raise ReplicaIdInUse(
                            f"WORKSPACE_REPLICA_ID={self.id} is in use by a running server (its heartbeat goes on): "
                            "give each replica an id of its own"
                        )
        try:
            with self.store.session() as session:
                now = self._clock(session)
                row = session.get(ReplicaRow, self.id)
                if row is None:
                    session.add(ReplicaRow(id=self.id, address=self.address, started_at=now, heartbeat_at=now))
                else:
                    row.address, row.started_at, row.heartbeat_at = self.address, now, now
        except IntegrityError:
            raise ReplicaIdInUse(
                f"WORKSPACE_REPLICA_ID={self.id}: another server registered this id at the same moment; "
                "give each replica an id of its own"
            ) from None
        self._started_at = now
        log.info("replica %s joined (%s)", self.id, self.address or "no address")

    def leave(self) -> bool:
        """Stop the threads, give the lease up and leave the table; whether no other replica is alive then
        (the last one out removes what all of them shared, such as the warm pool). Idempotent."""
        self._stop.set()
        self._tick_now.set()
        self._outbox_ready.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._lease_until = float("-inf")
        if self._started_at is None:
            return self._left_last
        try:
            with self.store.session() as session:
                now = self._clock(session)
                given_up = _changed(
                    session, update(Lease).where(Lease.name == LEADER, Lease.holder == self.id).values(expires_at=now)
                )
                session.execute(
                    delete(ReplicaRow).where(ReplicaRow.id == self.id, ReplicaRow.started_at == self._started_at)
                )
            if given_up:
                self._notify_now("lease")
            self._started_at = None
            self._left_last = not self.others_alive()
        except SQLAlchemyError as exc:
            # The others take over when the lease and the heartbeat expire; the pool stays for them.
            log.warning(
                "replica %s: leaving the replicas table failed: %s; nothing to do: the others count it gone once its "
                "heartbeat is %.0f s old, and take the lease once it runs out (%.0f s)",
                self.id,
                exc,
                self.timeout,
                self.lease,
            )
        return self._left_last

    # What the others ask

    def leads(self) -> bool:
        """Whether this replica may do the leader's work now: it holds the lease, and has not been unable to
        renew it for so long that it may have expired in the database."""
        return not self._stop.is_set() and self._monotonic() < self._lease_until

    @property
    def leader(self) -> str | None:
        """The replica that led at this replica's last look (every heartbeat); None: none was."""
        return self._leader

    @property
    def alive(self) -> list[str]:
        """The replicas whose heartbeat was fresh at this replica's last look, by id."""
        return list(self._alive)

    def live(self) -> set[str]:
        """The replicas alive now (a fresh heartbeat by the database's clock), asked of the database."""
        with self.store.session() as session:
            return self._live(session, self._clock(session))

    def others_alive(self) -> bool:
        return bool(self.live() - {self.id})

    def nudge(self) -> None:
        """Tell the other replicas that something changed which the leader may act on (a claim, a delete).
        Returns at once: the NOTIFY goes from a thread of its own."""
        if self._postgres and not self._stop.is_set():
            self._outbox.add("change")
            self._outbox_ready.set()

    # The thread's round

    def tick(self) -> float:
        """Beat, bid for or renew the lease when due, and look at who leads; seconds until the next round."""
        began = self._monotonic()
        wait = self.heartbeat
        try:
            with self.store.session() as session:
                now = self._clock(session)
                self._beat(session, now)
                lease = session.get(Lease, LEADER)
                held = lease is not None and lease.holder == self.id and lease.expires_at > now
                free = lease is None or lease.expires_at <= now or self._alone
                if not self._displaced and ((held and began >= self._renew_at) or free):
                    if self._take(session, now):
                        self._lease_until = began + self.lease - LEASE_MARGIN
                        self._renew_at = began + self.renew
                        held = True
                        self._forget_the_dead(session, now)
                    else:
                        held = False
                elif lease is not None and not held:
                    # Bid again the moment the holder's lease runs out.
                    wait = min(wait, max(0.05, (lease.expires_at - now).total_seconds() + 0.05))
                if held:
                    wait = min(wait, max(0.05, self._renew_at - began))
                else:
                    self._lease_until = float("-inf")
                if held:
                    self._leader = self.id
                elif free:  # another bidder won just now: who
                    fresh = Lease.name == LEADER, Lease.expires_at > now
                    self._leader = session.scalar(select(Lease.holder).where(*fresh))
                else:
                    self._leader = lease.holder if lease is not None else None
                self._alive = sorted(self._live(session, now))
        except SQLAlchemyError as exc:
            log.warning(
                "replica %s: the database did not answer (%s); retrying (is the database of WORKSPACE_DATABASE_URL up "
                "and reachable? meanwhile, leader work stops before the lease could end)",
                self.id,
                exc,
            )
            wait = min(wait, 1.0)
        self._changed_leading()
        return wait

    def _beat(self, session: Session, now: datetime) -> None:
        beat = update(ReplicaRow).where(ReplicaRow.id == self.id, ReplicaRow.started_at == self._started_at)
        if _changed(session, beat.values(heartbeat_at=now, address=self.address)):
            return
        row = session.get(ReplicaRow, self.id)
        if row is None and self._started_at is not None:  # forgotten while it was silent: back again
            session.add(ReplicaRow(id=self.id, address=self.address, started_at=self._started_at, heartbeat_at=now))
        elif row is not None and not self._displaced:
            # Another process registered this id after this one fell silent for REPLICA_TIMEOUT (a suspended
            # process, say): the id is the newcomer's now, and this one never leads again.
            self._displaced = True
            self._lease_until = float("-inf")
            log.error(
                "replica %s: another server took this replica id over while this one was silent; this one no "
                "longer leads: stop it, or give each replica an id of its own",
                self.id,
            )

    def _take(self, session: Session, now: datetime) -> bool:
        """Take or renew the lease in one guarded statement: the database decides between bidders."""
        until = now + timedelta(seconds=self.lease)
        # Alone, a holder other than this replica is a past run (a restart under a new id leads at once).
        free = Lease.name == LEADER if self._alone else or_(Lease.holder == self.id, Lease.expires_at <= now)
        taken = _changed(
            session, update(Lease).where(Lease.name == LEADER, free).values(holder=self.id, expires_at=until)
        )
        if taken:
            return True
        insert = postgresql_insert if self._postgres else sqlite_insert
        first = insert(Lease).values(name=LEADER, holder=self.id, expires_at=until).on_conflict_do_nothing()
        # Whether a row went in, by what it returns: psycopg's rowcount of an ORM insert says -1.
        return session.execute(first.returning(Lease.holder)).first() is not None

    def _live(self, session: Session, now: datetime) -> set[str]:
        if self._alone:
            return {self.id}
        fresh = ReplicaRow.heartbeat_at > now - timedelta(seconds=self.timeout)
        return set(session.scalars(select(ReplicaRow.id).where(fresh)))

    def _forget_the_dead(self, session: Session, now: datetime) -> None:
        session.execute(delete(ReplicaRow).where(ReplicaRow.heartbeat_at < now - timedelta(seconds=FORGET_SECONDS)))

    def _changed_leading(self) -> None:
        leading = self.leads()
        if leading != self._was_leading:
            self._was_leading = leading
            log.info("replica %s %s", self.id, "leads now" if leading else "no longer leads")
            self.on_change()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.tick()
            # Leading ends by itself when the lease cannot be renewed: wake to say so when it does.
            if self._was_leading:
                wait = min(wait, max(0.0, self._lease_until - self._monotonic()) + 0.01)
            self._tick_now.wait(wait)
            self._tick_now.clear()

    # Nudges (PostgreSQL's LISTEN/NOTIFY)

    def _conninfo(self) -> str:
        url = self.store.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo(), autocommit=True, connect_timeout=10) as connection:
                    connection.execute("LISTEN agentbox_replicas")  # CHANNEL
                    self.on_change()  # nudges sent while it was not listening are lost: look once
                    while not self._stop.is_set():
                        for note in connection.notifies(timeout=1.0):
                            self._received(note.payload)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning(
                        "replica %s: listening for the others failed (%s); retrying in 2 s (is the PostgreSQL of "
                        "WORKSPACE_DATABASE_URL up? meanwhile their nudges wait for this replica's next round)",
                        self.id,
                        exc,
                    )
                    self._stop.wait(2.0)

    def _received(self, payload: str) -> None:
        kind, _, sender = payload.partition(" ")
        if sender == self.id:
            return
        if kind == "lease":
            self._tick_now.set()
        else:
            self.on_change()

    def _send(self) -> None:
        while not self._stop.is_set():
            self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox and not self._stop.is_set():
                self._notify_now(self._outbox.pop())

    def _notify_now(self, kind: str) -> None:
        if not self._postgres:
            return
        try:
            with self.store.session() as session:
                session.execute(select(func.pg_notify(CHANNEL, f"{kind} {self.id}")))
        except SQLAlchemyError as exc:  # the others find out at their next round
            log.warning(
                "replica %s: nudging the others failed: %s; they see the change at their next round (if it goes on, "
                "check the PostgreSQL of WORKSPACE_DATABASE_URL)",
                self.id,
                exc,
            )
