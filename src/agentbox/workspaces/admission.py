"""Admission: whether one more workspace fits under the server's cap and the asking key's quota.

Both are counted from the database under the store's admission lock (a PostgreSQL advisory lock,
so the cap holds across every replica), which the caller holds while it counts and inserts.
"""

from __future__ import annotations

from agentbox.db.store import Store
from agentbox.errors import TooManyWorkspaces
from agentbox.wire.domain import Quota
from agentbox.wire.sizes import format_size
from agentbox.workspaces.metrics import Metrics


class Admission:
    """Refuses (429, naming the limit reached and what to do) a workspace that would not fit."""

    def __init__(self, store: Store, max_concurrent: int, metrics: Metrics) -> None:
        self.store = store
        self.max_concurrent = max_concurrent
        self.metrics = metrics

    def check(self, owner: str, quota: Quota | None, cpu: float, memory: int) -> None:
        """Refuse when the cap, or a quota of the asking key, would be passed by one more workspace of
        `cpu` and `memory`; the caller holds the store's admission lock, so both stay exact."""
        active = self.store.count_active()
        if active >= self.max_concurrent:
            self.metrics.rejections.inc()
            raise TooManyWorkspaces(
                f"{active} workspaces are active, the limit (WORKSPACE_MAX_CONCURRENT) is "
                f"{self.max_concurrent}: stop or delete one, or try again later"
            )
        if quota is None or quota == Quota():
            return
        count, cpus, used_memory = self.store.active_of(owner)
        reached = None
        if quota.max_workspaces is not None and count + 1 > quota.max_workspaces:
            reached = f"max_workspaces ({quota.max_workspaces}): {owner} has {count} active"
        elif quota.max_cpus is not None and cpus + cpu > quota.max_cpus + 1e-9:
            reached = f"max_cpus ({quota.max_cpus:g}): {owner}'s active workspaces use {cpus:g}, this one asks {cpu:g}"
        elif quota.max_memory is not None and used_memory + memory > quota.max_memory:
            reached = (
                f"max_memory ({format_size(quota.max_memory)}): {owner}'s active workspaces use "
                f"{format_size(used_memory)}, this one asks {format_size(memory)}"
            )
        if reached is not None:
            self.metrics.rejections.inc()
            raise TooManyWorkspaces(
                f"your API key's quota {reached}: stop or delete a workspace, ask for less, "
                "or ask an admin for a key with a larger quota"
            )
