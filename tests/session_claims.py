"""What the tests of shell sessions' claims check on SQLite (tests/unit/test_sessions.py) and on
PostgreSQL (tests/integration/test_replicas_continuity.py) alike."""

from __future__ import annotations

import concurrent.futures

from agentbox.db.store import Store
from agentbox.errors import Conflict
from agentbox.workspaces.session_claims import SessionClaims


def race_for_one_session(store: Store, contenders: int = 32) -> list[bool]:
    """`contenders` replicas, 16 at a time, take one free session's claim at once; whether each got it, sorted
    (exactly one should: `[False, ..., True]`)."""
    SessionClaims(store, "r0").fresh("ws-a", 7, "n0")
    SessionClaims(store, "r0").release("ws-a", 7, 0, None)

    def take(n: int) -> bool:
        try:
            SessionClaims(store, f"r{n}").take("ws-a", 7, f"n{n}")
        except Conflict:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return sorted(pool.map(take, range(1, contenders + 1)))
