"""API keys as records: whose a key is, what it may do, and whether it still works.

A key's secret is shown once, when it is made; the database keeps its SHA-256 only (keys are
random and long, so a slow hash would buy nothing). A key is looked up by that digest; what is
found is cached for at most `CACHE_SECONDS`, so a revocation reaches every server that shares
the database within that time, and a burst of calls costs one query a second per key.

The keys of `WORKSPACE_API_KEYS` become records at start-up (`sync_from_settings`): a key added
there is made, one removed from there is revoked, and its admins are `WORKSPACE_ADMINS`. Keys made
through the API live in the database alone.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agentbox.db.models import ApiKey, new_key_id, utcnow
from agentbox.db.store import Store
from agentbox.errors import BadRequest, NotFound
from agentbox.wire.domain import Quota

log = logging.getLogger("agentbox.auth")

#: Seconds a key's record is trusted before it is read again: the longest a revocation takes to bite.
CACHE_SECONDS = 1.0
#: A key's `last_used_at` is written at most this often.
USE_RECORDED_EVERY = timedelta(seconds=60)
#: Records kept in the cache at most (a flood of made-up keys must not grow it: misses are not kept).
MAX_CACHED = 10_000
SECRET_PREFIX = "agbx_"
NO_QUOTA = Quota()


@dataclass(frozen=True)
class Caller:
    """Who a request is: the key it bears (or that minted its token), whose it is, and what it may do."""

    key_id: str
    owner: str
    admin: bool = False
    quota: Quota = NO_QUOTA

    @classmethod
    def of(cls, record: ApiKey) -> Caller:
        quota = Quota(record.max_workspaces, record.max_cpus, record.max_memory)
        return cls(key_id=record.id, owner=record.owner, admin=record.admin, quota=quota)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    """The key records of one database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        # digest, and key id -> (monotonic time it was read, its Caller or None when revoked)
        self._by_digest: dict[str, tuple[float, Caller | None]] = {}
        self._by_id: dict[str, tuple[float, Caller | None]] = {}

    def authenticate(self, presented: str) -> Caller | None:
        """The caller whose key `presented` is, if it is a key that works; None otherwise. May read the database."""
        hit, caller = self.peek(presented)
        return caller if hit else self._refresh(ApiKey.digest == digest_of(presented))

    def peek(self, presented: str) -> tuple[bool, Caller | None]:
        """(True, `authenticate`'s answer) when the cache knows it; (False, None) when the database must be read.

        Never blocks on the database: what an event loop may call for every request."""
        if not presented:
            return True, None
        return self._cached(self._by_digest, digest_of(presented))

    def active(self, key_id: str) -> Caller | None:
        """The caller of key `key_id` while it works (what a token minted with it is checked against)."""
        hit, caller = self._cached(self._by_id, key_id)
        return caller if hit else self._refresh(ApiKey.id == key_id)

    def _cached(self, cache: dict[str, tuple[float, Caller | None]], name: str) -> tuple[bool, Caller | None]:
        with self._lock:
            found = cache.get(name)
        if found is None or time.monotonic() - found[0] >= CACHE_SECONDS:
            return False, None
        return True, found[1]

    def _refresh(self, where: ColumnElement[bool]) -> Caller | None:
        now = utcnow()
        with self.store.session() as session:
            record = session.scalars(select(ApiKey).where(where)).first()
            if record is None:
                return None  # not cached: made-up keys must not fill the cache
            if record.revoked_at is None and (
                record.last_used_at is None or now - record.last_used_at > USE_RECORDED_EVERY
            ):
                record.last_used_at = now
            caller = Caller.of(record) if record.revoked_at is None else None
            key_id, digest = record.id, record.digest
        read = time.monotonic()
        with self._lock:
            if len(self._by_id) >= MAX_CACHED:
                self._by_id.clear()
                self._by_digest.clear()
            self._by_id[key_id] = self._by_digest[digest] = (read, caller)
        return caller

    def create(self, owner: str, name: str, admin: bool = False, quota: Quota = NO_QUOTA) -> tuple[ApiKey, str]:
        """A new key: its record and its secret, which is never shown again."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id=new_key_id(),
            owner=owner,
            name=name,
            digest=digest_of(secret),
            admin=admin,
            source="api",
            max_workspaces=quota.max_workspaces,
            max_cpus=quota.max_cpus,
            max_memory=quota.max_memory,
            created_at=utcnow(),
        )
        with self.store.session() as session:
            session.add(record)
        log.info("API key %s (%r) made for %s%s", record.id, name, owner, " (admin)" if admin else "")
        return record, secret

    def find(self, owner: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
        """Keys, oldest first: `owner`'s only, when given."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if owner is not None:
            query = query.where(ApiKey.owner == owner)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        with self.store.session() as session:
            return list(session.scalars(query))

    def get(self, key_id: str) -> ApiKey:
        """Raises NotFound when there is no such key."""
        with self.store.session() as session:
            record = session.get(ApiKey, key_id)
        if record is None:
            raise NotFound(f"no API key {key_id!r}: list them with GET /api/v1/keys")
        return record

    def revoke(self, key_id: str) -> ApiKey:
        """Stop key `key_id` working, everywhere, within CACHE_SECONDS. Revoking a revoked key is a no-op.

        Raises NotFound when there is no such key, BadRequest for the last admin key that works."""
        with self.store.session() as session:
            record = session.get(ApiKey, key_id, with_for_update=True)
            if record is None:
                raise NotFound(f"no API key {key_id!r}: list them with GET /api/v1/keys")
            if record.revoked_at is None:
                if record.admin and self._admins(session) == 1:
                    raise BadRequest(
                        f"{key_id} is the last admin key that works: make another admin key first "
                        "(POST /api/v1/keys with admin=true), or no one could manage keys any more"
                    )
                record.revoked_at = utcnow()
                log.info("API key %s (%r) of %s revoked", record.id, record.name, record.owner)
        with self._lock:
            self._by_id.clear()  # this server at once; the others within CACHE_SECONDS
            self._by_digest.clear()
        return record

    @staticmethod
    def _admins(session: Session) -> int:
        query = select(func.count()).where(ApiKey.admin.is_(True), ApiKey.revoked_at.is_(None))
        return session.scalar(query) or 0

    def revoked_among(self, key_ids: Collection[str]) -> set[str]:
        """Which of `key_ids` no longer work (uncached: what live connections are checked against)."""
        if not key_ids:
            return set()
        working = select(ApiKey.id).where(ApiKey.id.in_(list(key_ids)), ApiKey.revoked_at.is_(None))
        with self.store.session() as session:
            return set(key_ids) - set(session.scalars(working))

    def sync_from_settings(self, keys: Mapping[str, str], admins: Collection[str]) -> None:
        """Make the records of WORKSPACE_API_KEYS (`keys`: secret -> owner) match it.

        Safe when several servers start at once: a key another one just made is taken as it is.
        """
        wanted = {digest_of(secret): owner for secret, owner in keys.items()}
        now = utcnow()
        for position, (digest, owner) in enumerate(wanted.items(), start=1):
            try:
                with self.store.session() as session:
                    record = session.scalars(select(ApiKey).where(ApiKey.digest == digest)).first()
                    if record is None:
                        session.add(
                            ApiKey(
                                id=new_key_id(),
                                owner=owner,
                                name=f"WORKSPACE_API_KEYS entry {position}",
                                digest=digest,
                                admin=owner in admins,
                                source="env",
                                created_at=now,
                            )
                        )
                    elif record.revoked_at is not None:
                        log.warning(
                            "entry %d of WORKSPACE_API_KEYS (owner %s) is key %s, which was revoked: it stays "
                            "revoked; remove it from WORKSPACE_API_KEYS",
                            position,
                            owner,
                            record.id,
                        )
                    elif record.source == "env":
                        record.owner, record.admin = owner, owner in admins
            except IntegrityError:
                continue  # another server made it at the same moment
        stale = (
            update(ApiKey)
            .where(ApiKey.source == "env", ApiKey.revoked_at.is_(None), ApiKey.digest.not_in(list(wanted)))
            .values(revoked_at=now)
        )
        with self.store.session() as session:
            removed = session.execute(stale).rowcount  # type: ignore[attr-defined]
        if removed:
            log.info("%d key(s) no longer in WORKSPACE_API_KEYS revoked", removed)
        with self._lock:
            self._by_id.clear()
            self._by_digest.clear()

    def any(self) -> bool:
        """Whether any key works (a server with none refuses every call)."""
        with self.store.session() as session:
            return session.scalars(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)).first() is not None
