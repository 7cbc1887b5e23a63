"""The audit trail: every call of the API on a workspace, written down and logged as a structured line.

What is kept of a call is who made it, on which workspace, what (the method and route), its
arguments summarized, its status and how long it took. File contents (`content`, `old_string`,
`new_string`) are replaced by their length and environment variables by their names: the
trail says what an agent did without becoming a copy of its files or secrets.

Records are written by a thread of their own, a batch at a time, so that a call does not wait
for the database; a read of the trail first waits for what is queued (`flush`).

A workspace's trail is its owner's: a call is kept (stored and logged) only when its caller
was authenticated as the workspace's owner, checked against the store by the writer (one
query per batch). Anyone else's attempts (no key, another owner's key) would otherwise let
a stranger write into, and flood, a trail that is not theirs.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from agentbox.db.models import AuditRecord, Workspace
from agentbox.db.store import Store

log = logging.getLogger("agentbox.workspaces.audit")

#: Argument names whose values are file contents: only their length is kept.
CONTENTS = frozenset({"content", "old_string", "new_string"})
#: Argument names whose values are secrets of some kind: never kept.
SECRETS = frozenset({"token", "agentbox_preview"})
#: Characters of any other string argument kept (a long command is cut).
MAX_TEXT = 1000
_BATCH = 500
#: Seconds the writer gathers calls before writing them together.
GATHER_SECONDS = 1.0


@dataclass(frozen=True)
class Call:
    workspace_id: str
    owner: str | None
    at: datetime
    action: str  # "POST /exec", "GET /files", "WEBSOCKET /processes/{pid}/terminal"...
    arguments: dict[str, Any]
    status: int
    duration_ms: int


def summarized(arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` as the trail keeps them (see the module's docstring)."""
    kept: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in SECRETS:
            continue
        if name in CONTENTS:
            kept[name] = f"<{len(value)} characters>" if isinstance(value, str) else "<not kept>"
        elif name == "env" and isinstance(value, dict):
            kept[name] = sorted(value)  # the names only
        else:
            kept[name] = _short(value)
    return kept


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + f"… ({len(value)} characters)"
    if isinstance(value, list):
        return [_short(item) for item in value[:100]]
    if isinstance(value, dict):
        return {str(key): _short(item) for key, item in list(value.items())[:100]}
    return value


class AuditLog:
    """Where calls are recorded: a queue, drained into the store by a writer thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[Call | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self, call: Call) -> None:
        """Queue `call`: the writer stores it, and logs it as one JSON line, if its caller owns the workspace."""
        if call.owner is None:
            return  # an unauthenticated call is nobody's to record (the access log has it)
        self._ensure_writer()
        self._queue.put(call)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every call recorded before is in the store."""
        self._ensure_writer()
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join(timeout=30)

    def page(self, workspace_id: str, limit: int, before: int | None = None) -> list[AuditRecord]:
        """The newest `limit` records of a workspace, older than record `before` if given."""
        self.flush()
        return self.store.audit(workspace_id, limit, before)

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="audit-writer", daemon=True)
                self._writer.start()

    def _write(self) -> None:
        """Gather calls for up to GATHER_SECONDS (one commit for many, not one per call), or until a
        reader waits or the log closes; write them; again."""
        while True:
            batch: list[Call] = []
            waiting: list[threading.Event] = []
            item = self._queue.get()
            deadline = time.monotonic() + GATHER_SECONDS
            while True:
                if item is None:
                    self._store(batch)
                    for event in waiting:
                        event.set()
                    return
                if isinstance(item, threading.Event):
                    waiting.append(item)
                    break
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
            self._store(batch)
            for event in waiting:
                event.set()

    def _store(self, batch: list[Call]) -> None:
        if not batch:
            return
        try:
            owners = self._owners({call.workspace_id for call in batch})
        except Exception:  # the database is away: log the calls, marked unchecked; the server goes on
            log.exception("checking the owners of %d audited calls failed", len(batch))
            for call in batch:
                _log(call, unchecked=True)
            return
        kept = [call for call in batch if call.owner is not None and owners.get(call.workspace_id) == call.owner]
        for call in kept:
            _log(call)
        if not kept:
            return
        try:
            self.store.add_audit([AuditRecord(**vars(call)) for call in kept])
        except Exception:  # the database is away: the lines are in the log; the server goes on
            log.exception("writing %d audit records failed", len(kept))

    def _owners(self, workspace_ids: set[str]) -> dict[str, str]:
        """The owner of each of these workspaces that exists."""
        query = select(Workspace.id, Workspace.owner).where(Workspace.id.in_(sorted(workspace_ids)))
        with self.store.session() as session:
            return {workspace_id: owner for workspace_id, owner in session.execute(query)}


def _log(call: Call, unchecked: bool = False) -> None:
    if log.isEnabledFor(logging.INFO):
        line = {"audit": True, **vars(call), "at": call.at.isoformat()} | ({"unchecked": True} if unchecked else {})
        log.info(json.dumps(line, default=str))
