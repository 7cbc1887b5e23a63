"""Prometheus metrics of the workspace lifecycle, served at GET /metrics.

Each service has its own registry, so that several services in one process (tests) never
share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Claims take milliseconds, cold starts around a second: buckets cover both.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.creates = Counter(
            "agentbox_workspace_creates",
            "Workspaces handed out, by source: a cold start or a claim from the warm pool",
            ["source"],
            registry=self.registry,
        )
        self.claims = Counter(
            "agentbox_pool_claims", "Warm-pool containers claimed by a create", registry=self.registry
        )
        self.expiries = Counter(
            "agentbox_workspace_expiries", "Ephemeral workspaces destroyed by the TTL reaper", registry=self.registry
        )
        self.failures = Counter(
            "agentbox_workspace_failures",
            "Workspaces that failed, by stage: create, start, pool (a pool boot) or vanished (container lost)",
            ["stage"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "agentbox_workspace_rejections",
            "Creates refused because WORKSPACE_MAX_CONCURRENT workspaces were active",
            registry=self.registry,
        )
        self.create_seconds = Histogram(
            "agentbox_workspace_create_seconds",
            "Time to hand out a ready workspace, by source",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.suspends = Counter(
            "agentbox_workspace_suspends", "Idle workspaces suspended (their sandbox frozen)", registry=self.registry
        )
        self.wake_seconds = Histogram(
            "agentbox_workspace_wake_seconds",
            "Time to wake a suspended workspace for the call that found it asleep",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._running = Gauge(
            "agentbox_workspaces_running",
            "Running workspaces by state: awake, or suspended (their sandbox frozen until used)",
            ["state"],
            registry=self.registry,
        )
        self._active = Gauge(
            "agentbox_workspaces_active",
            "Workspaces starting or running (counted against the cap)",
            registry=self.registry,
        )
        self._pool = Gauge("agentbox_pool_ready", "Warm-pool containers ready to be claimed", registry=self.registry)
        for source in ("cold", "pool"):  # export zeros before the first create
            self.creates.labels(source)
            self.create_seconds.labels(source)
        for stage in ("create", "start", "pool", "vanished"):
            self.failures.labels(stage)

    def observe(self, active: Callable[[], int], pool_ready: Callable[[], int], running: Callable[[bool], int]) -> None:
        """Read the gauges from the database when scraped, so they are never stale; `running(suspended)`."""
        self._active.set_function(active)
        self._running.labels("awake").set_function(lambda: running(False))
        self._running.labels("suspended").set_function(lambda: running(True))
        self._pool.set_function(pool_ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)
