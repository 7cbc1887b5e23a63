"""The last hour of each workspace's CPU, memory and disk, sampled in the background (the dashboard's charts).

Only the leader measures (replicas.py): measuring reads each sandbox's cgroup or asks its provider,
work that must not be multiplied by the number of replicas. It writes each round's samples to the
database (`usage_samples`, one multi-row insert, rows older than an hour pruned), and every replica,
the leader too, reads the new rows every round into its memory, which answers the API: a replica
answers what the others would, and a look at a chart costs no query. A new leader starts with no
previous measurement, so its first sample of each workspace has no CPU figure (a gap in the charts).
Without `shared` (unit tests) the samples go straight into memory.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select

from agentbox.db.models import UsageSampleRow, utcnow
from agentbox.db.store import Store
from agentbox.errors import AgentboxError
from agentbox.providers.base import Usage

log = logging.getLogger("agentbox.workspaces.usage")

#: How far back the history goes.
SPAN_SECONDS = 3600


@dataclass(frozen=True)
class UsageSample:
    at: datetime
    cpu: float | None  # cores busy on average since the sample before (None: the first of a run)
    memory: int  # bytes
    disk: int | None = None  # bytes written to its disk (None: its provider cannot say)


class SharedSamples:
    """The samples in the database: the leader writes them, every replica reads them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, samples: list[tuple[str, UsageSample]]) -> None:
        if not samples:
            return
        rows = [{"workspace_id": w, "at": s.at, "cpu": s.cpu, "memory": s.memory, "disk": s.disk} for w, s in samples]
        with self.store.session() as session:
            session.execute(insert(UsageSampleRow), rows)

    def since(self, after: int, not_before: datetime) -> list[tuple[int, str, UsageSample]]:
        """Rows after row `after` and not older than `not_before`, oldest first: (row id, workspace id, sample)."""
        query = (
            select(UsageSampleRow)
            .where(UsageSampleRow.id > after, UsageSampleRow.at >= not_before)
            .order_by(UsageSampleRow.id)
        )
        with self.store.session() as session:
            return [
                (r.id, r.workspace_id, UsageSample(at=r.at, cpu=r.cpu, memory=r.memory, disk=r.disk))
                for r in session.scalars(query)
            ]

    def prune(self, before: datetime) -> None:
        with self.store.session() as session:
            session.execute(delete(UsageSampleRow).where(UsageSampleRow.at < before))


class UsageHistory:
    """Samples `measure()` (workspace id -> usage now, every running one) every `interval` seconds while
    `leads()`; with `shared`, through the database (see the module's docstring)."""

    def __init__(
        self,
        measure: Callable[[], Mapping[str, Usage]],
        interval: float,
        clock: Callable[[], datetime] = utcnow,
        shared: SharedSamples | None = None,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self.interval = interval
        self._measure = measure
        self._clock = clock
        self._shared = shared
        self._leads = leads
        self._samples: dict[str, deque[UsageSample]] = {}
        self._previous: dict[str, tuple[datetime, Usage]] = {}
        self._seen = 0  # the last row of `shared` read
        self._pruned: datetime | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentbox-usage", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def of(self, workspace_id: str) -> list[UsageSample]:
        """The samples of the last hour, oldest first (empty: none yet, or its provider cannot measure)."""
        since = self._clock() - timedelta(seconds=SPAN_SECONDS)  # the deque's length assumes rounds on time
        with self._lock:
            return [s for s in self._samples.get(workspace_id, ()) if s.at >= since]

    def latest(self, workspace_id: str) -> UsageSample | None:
        with self._lock:
            samples = self._samples.get(workspace_id)
            return samples[-1] if samples else None

    def sample(self) -> None:
        """Measure every running workspace once and keep the result (in the database, with `shared`)."""
        measured = self._measure()
        at = self._clock()
        taken = []
        with self._lock:
            for workspace_id, usage in measured.items():
                cpu = None
                if workspace_id in self._previous:
                    then, before = self._previous[workspace_id]
                    seconds = (at - then).total_seconds()
                    if seconds > 0 and usage.cpu_seconds >= before.cpu_seconds:  # less: it restarted
                        cpu = (usage.cpu_seconds - before.cpu_seconds) / seconds
                self._previous[workspace_id] = (at, usage)
                sample = UsageSample(at=at, cpu=cpu, memory=usage.memory_bytes, disk=usage.disk_bytes)
                taken.append((workspace_id, sample))
            # A stopped or deleted workspace's next run's CPU is not measured against this one's.
            for workspace_id in set(self._previous) - set(measured):
                del self._previous[workspace_id]
        if self._shared is None:
            self._keep(taken, at)
            return
        self._shared.add(taken)
        if self._pruned is None or (at - self._pruned).total_seconds() > 60:
            self._shared.prune(at - timedelta(seconds=SPAN_SECONDS + 60))
            self._pruned = at

    def refresh(self) -> None:
        """Take in what was sampled into the database since the last look."""
        assert self._shared is not None
        now = self._clock()
        # By row id, not time: ids come from the database, times from the leader's clock. (Two leaders
        # writing at once, at a hand-over, may commit out of id order: a sample lost, not a wrong one.)
        rows = self._shared.since(self._seen, now - timedelta(seconds=SPAN_SECONDS))
        if rows:
            self._seen = rows[-1][0]
        self._keep([(workspace_id, sample) for _, workspace_id, sample in rows], now)

    def _keep(self, taken: list[tuple[str, UsageSample]], now: datetime) -> None:
        with self._lock:
            for workspace_id, sample in taken:
                samples = self._samples.setdefault(workspace_id, deque(maxlen=int(SPAN_SECONDS / self.interval) + 1))
                samples.append(sample)
            # A stopped or deleted workspace's chart stays until its last sample is an hour old.
            for workspace_id in [
                w for w, s in self._samples.items() if (now - s[-1].at).total_seconds() > SPAN_SECONDS
            ]:
                del self._samples[workspace_id]

    def round(self) -> None:
        """Sample if this replica leads, then take in what was sampled (every round of the thread)."""
        if self._leads():
            self._guarded(self.sample)
        else:
            with self._lock:
                self._previous.clear()  # a measurement of when it last led is no base for a CPU figure
        if self._shared is not None:
            self._guarded(self.refresh)

    def _run(self) -> None:
        if self._shared is not None:
            self._guarded(self.refresh)  # the last hour, as the leader sampled it
        while not self._stop.wait(self.interval):
            self.round()

    @staticmethod
    def _guarded(work: Callable[[], None]) -> None:
        try:
            work()
        except AgentboxError as exc:  # the engine is down: the charts get a gap, the loop goes on
            log.warning("measuring workspaces failed: %s", exc.detail)
        except Exception:
            log.exception("measuring workspaces failed")
