"""The vault: an owner's secrets, stored sealed; listed by name, replaced and deleted; revealed only to
the egress proxy, which puts them into a workspace's requests so that they never enter the sandbox.

A value is sealed with the server's keyring (github/crypto.py: AES-256-GCM under
GITHUB_APP_ENCRYPTION_KEY, the key the GitHub Apps' secrets use), bound to the table, the owner, the
name and the column: a sealed value copied to another owner's row, or to another name, does not open.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agentbox.db.models import Secret, new_secret_id, utcnow
from agentbox.db.store import Store
from agentbox.errors import AgentboxError, Conflict, NotFound, Unprocessable
from agentbox.github.crypto import DecryptError, Keyring
from agentbox.wire.vault import MAX_PER_OWNER, metadata_problem, name_problem, value_problem

#: The first half of the PostgreSQL advisory lock under which an owner's secrets change (the second
#: is the owner's hash): counting them and adding one happen under it, across every replica.
VAULT_LOCK = 0x76617531


@dataclass(frozen=True)
class SecretInfo:
    """What may be said about a secret: its name, identifier, version, metadata and times, never its value."""

    name: str
    created_at: datetime
    updated_at: datetime
    id: str
    #: 1 when created, one more at each new value.
    version: int
    metadata: dict[str, str]


class UnknownSecret(NotFound):
    """No secret of this name for this owner; the detail names it and how to set it."""

    def __init__(self, owner: str, name: str) -> None:
        super().__init__(
            f"no secret {name!r} of owner {owner!r}: set it with PUT /api/v1/secrets/{name} "
            f"(`agentbox secrets set {name}`); GET /api/v1/secrets lists yours"
        )
        self.owner = owner
        self.name = name


class TooManySecrets(Conflict):
    """The owner holds MAX_PER_OWNER secrets already."""


class SecretExists(Conflict):
    """`create` of a name the owner holds already (`put` replaces instead)."""


class Unsealable(AgentboxError):
    """A stored value cannot be opened with the server's keys (the key was changed without a rotation)."""

    status_code = 503


def _context(owner: str, name: str) -> str:
    # Names hold no "/" (wire/vault.py's rule), so the owner is everything between the table and the name:
    # no two rows share one.
    return f"secrets/{owner}/{name}/value"


def _owner_lock_key(owner: str) -> int:
    """A stable signed 32-bit number for `owner` (PostgreSQL's advisory locks take two int4)."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)


def _info(row: Secret) -> SecretInfo:
    return SecretInfo(
        name=row.name,
        created_at=row.created_at,
        updated_at=row.updated_at,
        id=row.id,
        version=row.version,
        metadata=dict(row.labels),
    )


#: The longest identifier or name a lookup considers (a longer one names nothing).
_MAX_SELECTOR = 128


def _selected(session: Session, owner: str, selector: str) -> Secret | None:
    """`owner`'s secret with identifier `selector`, else named `selector`, else named it in lower case
    (E2B's canonical form); None when none is (another owner's is never found)."""
    if len(selector) > _MAX_SELECTOR:
        return None
    if selector.startswith("sec_"):
        row = session.scalar(select(Secret).where(Secret.owner == owner, Secret.id == selector))
        if row is not None:
            return row
    for name in dict.fromkeys((selector, selector.lower())):
        if name_problem(name) is None:
            row = session.get(Secret, (owner, name))
            if row is not None:
                return row
    return None


class Vault:
    """Store, list, delete and reveal an owner's secrets. One owner never reaches another's: every method
    takes the owner, and a name is looked up under it only."""

    def __init__(self, store: Store, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring
        # SQLite serves one process, where a thread lock does what PostgreSQL's advisory lock does.
        self._lock = threading.Lock()

    def put(self, owner: str, name: str, value: str) -> tuple[SecretInfo, bool]:
        """Store `value` as `owner`'s secret `name`, replacing its value if it exists; (its info, whether
        it was created).

        Raises Unprocessable (422) for a bad name or value (the detail names which), TooManySecrets
        (409) when the owner already holds MAX_PER_OWNER others.
        """
        _check_name(name)
        _check_value(value)
        sealed = self.keyring.seal(value.encode(), _context(owner, name))
        now = utcnow()
        with self._changing(owner) as session:
            row = session.get(Secret, (owner, name))
            if row is not None:
                row.value, row.updated_at, row.version = sealed, now, row.version + 1
                return _info(row), False
            return self._add(session, owner, name, sealed, {}), True

    def create(self, owner: str, name: str, value: str, metadata: dict[str, str]) -> SecretInfo:
        """Store `value` as `owner`'s new secret `name`, at version 1, with `metadata` (E2B's create).

        Raises Unprocessable (422) for a bad name, value or metadata (the detail names which),
        SecretExists (409) when the owner has one of that name, TooManySecrets (409) at MAX_PER_OWNER.
        """
        _check_name(name)
        _check_value(value)
        _check_metadata(metadata)
        sealed = self.keyring.seal(value.encode(), _context(owner, name))
        with self._changing(owner) as session:
            if session.get(Secret, (owner, name)) is not None:
                raise SecretExists(f"you have a secret named {name!r} already: update it, or destroy it first")
            return self._add(session, owner, name, sealed, metadata)

    def _add(self, session: Session, owner: str, name: str, sealed: bytes, metadata: dict[str, str]) -> SecretInfo:
        held = session.scalar(select(func.count()).select_from(Secret).where(Secret.owner == owner)) or 0
        if held >= MAX_PER_OWNER:
            raise TooManySecrets(
                f"you hold {held} secrets, the most one owner may: delete one you no longer need "
                "(DELETE /api/v1/secrets/NAME, `agentbox secrets rm NAME`) before adding "
                f"{name!r}, or replace an existing one"
            )
        now = utcnow()
        row = Secret(
            owner=owner,
            name=name,
            value=sealed,
            created_at=now,
            updated_at=now,
            id=new_secret_id(),
            version=1,
            labels=dict(metadata),
        )
        session.add(row)
        return _info(row)

    def find(self, owner: str, selector: str) -> SecretInfo:
        """`owner`'s secret by identifier or name (see _selected). Raises UnknownSecret (404) otherwise."""
        with self.store.session() as session:
            row = _selected(session, owner, selector)
            if row is None:
                raise UnknownSecret(owner, selector)
            return _info(row)

    def update(self, owner: str, selector: str, value: str, metadata: dict[str, str] | None) -> SecretInfo:
        """Give `owner`'s secret (by identifier or name) a new value, its version one more; `metadata`,
        when given, replaces its metadata (E2B's update).

        Raises UnknownSecret (404), Unprocessable (422) for a bad value or metadata.
        """
        _check_value(value)
        if metadata is not None:
            _check_metadata(metadata)
        with self._changing(owner) as session:
            row = _selected(session, owner, selector)
            if row is None:
                raise UnknownSecret(owner, selector)
            row.value = self.keyring.seal(value.encode(), _context(owner, row.name))
            row.version, row.updated_at = row.version + 1, utcnow()
            if metadata is not None:
                row.labels = dict(metadata)
            return _info(row)

    def remove(self, owner: str, selector: str) -> None:
        """Delete `owner`'s secret by identifier or name. Raises UnknownSecret (404) when there is none."""
        with self._changing(owner) as session:
            row = _selected(session, owner, selector)
            if row is None:
                raise UnknownSecret(owner, selector)
            session.delete(row)

    def page(self, owner: str, limit: int, after: str | None) -> tuple[builtins.list[SecretInfo], bool]:
        """Up to `limit` of `owner`'s secrets by name (A-Z), those named after `after` when given; and
        whether more follow."""
        with self.store.session() as session:
            query = select(Secret).where(Secret.owner == owner)
            if after is not None:
                query = query.where(Secret.name > after)
            rows = builtins.list(session.scalars(query.order_by(Secret.name).limit(limit + 1)))
            return [_info(row) for row in rows[:limit]], len(rows) > limit

    def list(self, owner: str) -> builtins.list[SecretInfo]:
        """`owner`'s secrets by name (A-Z), without their values. Raises nothing of its own."""
        with self.store.session() as session:
            rows = session.scalars(select(Secret).where(Secret.owner == owner).order_by(Secret.name))
            return [_info(row) for row in rows]

    def delete(self, owner: str, name: str) -> None:
        """Delete `owner`'s secret `name` and its value.

        Raises UnknownSecret (404) when the owner has no such secret (another owner's is not seen),
        Unprocessable (422) for a malformed name.
        """
        _check_name(name)
        with self._changing(owner) as session:
            row = session.get(Secret, (owner, name))
            if row is None:
                raise UnknownSecret(owner, name)
            session.delete(row)

    def reveal(self, owner: str, name: str) -> str:
        """The value of `owner`'s secret `name` (else of `name` lower-cased, as E2B stores names): for the egress
        proxy alone, which puts it into a request leaving a workspace of that owner. Never answer it to a client.

        Raises UnknownSecret (404, naming it) when the owner has no such secret, Unprocessable (422)
        for a malformed name, Unsealable (503) when the server's keys cannot open it.
        """
        _check_name(name)
        with self.store.session() as session:
            # E2B stores names lower-cased and its SDK fills a placeholder with the name as typed.
            row = session.get(Secret, (owner, name)) or session.get(Secret, (owner, name.lower()))
        if row is None:
            raise UnknownSecret(owner, name)
        try:
            return self.keyring.open(row.value, _context(owner, row.name)).decode()
        except DecryptError as exc:
            raise Unsealable(
                f"secret {name!r} of owner {owner!r} cannot be decrypted ({exc}): was GITHUB_APP_ENCRYPTION_KEY "
                "changed without `agentbox github rotate-key`? Give the previous key as GITHUB_APP_ENCRYPTION_OLD_KEY"
            ) from None

    def rotate(self) -> tuple[int, int]:
        """Re-seal every secret not sealed under the current key, in one transaction; (re-sealed, total).

        Raises Unsealable (503) when one cannot be opened with the keys given; then nothing changes.
        """
        resealed = 0
        with self.store.session() as session:
            rows = builtins.list(session.scalars(select(Secret)))
            for row in rows:
                if self.keyring.sealed_with_current(row.value):
                    continue
                context = _context(row.owner, row.name)
                try:
                    plaintext = self.keyring.open(row.value, context)
                except DecryptError as exc:
                    raise Unsealable(
                        f"secret {row.name!r} of owner {row.owner!r} cannot be decrypted ({exc}); nothing was "
                        "changed: give the key it was sealed with as GITHUB_APP_ENCRYPTION_OLD_KEY"
                    ) from None
                row.value = self.keyring.seal(plaintext, context)
                resealed += 1
        return resealed, len(rows)

    @contextmanager
    def _changing(self, owner: str) -> Iterator[Session]:
        """A transaction in which `owner`'s secrets change alone: counting them and adding one (or two
        first puts of one name) cannot interleave, on this replica or another."""
        with self._lock, self.store.session() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Held until the transaction ends, commit or rollback.
                session.execute(select(func.pg_advisory_xact_lock(VAULT_LOCK, _owner_lock_key(owner))))
            yield session


def _check_value(value: str) -> None:
    problem = value_problem(value)
    if problem is not None:
        raise Unprocessable(f"value: {problem}")


def _check_metadata(metadata: dict[str, str]) -> None:
    problem = metadata_problem(metadata)
    if problem is not None:
        raise Unprocessable(f"metadata: {problem}")


def _check_name(name: str) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise Unprocessable(f"name {name[:80]!r}: {problem}")
