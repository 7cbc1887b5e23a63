"""The last hour of each workspace's CPU and memory, sampled in the background (the dashboard's charts).

Kept in this server's memory, not the database: an hour of samples is a few kilobytes a
workspace, lost with a restart (the charts start again), and writing one row per workspace
every few seconds would cost the database more than the charts are worth. With several
replicas each samples every running workspace and answers from its own history.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from agentbox.errors import AgentboxError
from agentbox.models import utcnow
from agentbox.providers.base import Usage

log = logging.getLogger("agentbox.usage")

#: How far back the history goes.
SPAN_SECONDS = 3600


@dataclass(frozen=True)
class UsageSample:
    at: datetime
    cpu: float | None  # cores busy on average since the sample before (None: the first of a run)
    memory: int  # bytes


class UsageHistory:
    """Samples `measure()` (workspace id -> usage now, every running one) every `interval` seconds."""

    def __init__(
        self,
        measure: Callable[[], Mapping[str, Usage]],
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.interval = interval
        self._measure = measure
        self._clock = clock
        self._samples: dict[str, deque[UsageSample]] = {}
        self._previous: dict[str, tuple[datetime, Usage]] = {}
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
        """Measure every running workspace once and keep the result."""
        measured = self._measure()
        at = self._clock()
        with self._lock:
            for workspace_id, usage in measured.items():
                cpu = None
                if workspace_id in self._previous:
                    then, before = self._previous[workspace_id]
                    seconds = (at - then).total_seconds()
                    if seconds > 0 and usage.cpu_seconds >= before.cpu_seconds:  # less: it restarted
                        cpu = (usage.cpu_seconds - before.cpu_seconds) / seconds
                self._previous[workspace_id] = (at, usage)
                samples = self._samples.setdefault(workspace_id, deque(maxlen=int(SPAN_SECONDS / self.interval) + 1))
                samples.append(UsageSample(at=at, cpu=cpu, memory=usage.memory_bytes))
            # A stopped or deleted workspace's chart stays until its last sample is an hour old; its
            # next run's CPU is not measured against this one's.
            for workspace_id in set(self._previous) - set(measured):
                del self._previous[workspace_id]
            for workspace_id in [w for w, s in self._samples.items() if (at - s[-1].at).total_seconds() > SPAN_SECONDS]:
                del self._samples[workspace_id]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except AgentboxError as exc:  # the engine is down: the charts get a gap, the loop goes on
                log.warning("measuring workspaces failed: %s", exc.detail)
            except Exception:
                log.exception("measuring workspaces failed")
