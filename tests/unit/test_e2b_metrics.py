"""How agentbox's usage samples become E2B's metric points (e2b_api/metrics.py), and the disk figure's way
through the database every replica reads the samples from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agentbox.db.store import Store
from agentbox.e2b_api.metrics import metric
from agentbox.providers.base import Usage
from agentbox.workspaces.usage import SharedSamples, UsageHistory, UsageSample
from tests.unit.test_store import make_workspace

MiB = 1 << 20
AT = datetime(2026, 11, 29, 12, 0, 0, 500000, tzinfo=UTC)


def test_a_sample_is_a_point_with_the_sandboxs_own_limits() -> None:
    workspace = make_workspace("ws-a")
    workspace.cpu = 2.0
    point = metric(workspace, UsageSample(at=AT, cpu=0.5, memory=300 * MiB, disk=40 * MiB))
    assert point == {
        "timestamp": "2026-11-29T12:00:00.500000+00:00",
        "timestampUnix": int(AT.timestamp()),
        "cpuCount": 2,
        "cpuUsedPct": 25.0,  # half a core of two
        "memUsed": 300 * MiB,
        "memTotal": 5 << 30,
        "memCache": 0,
        "diskUsed": 40 * MiB,
        "diskTotal": 10 << 30,
    }


def test_no_made_up_figures_and_none_past_the_limits() -> None:
    workspace = make_workspace("ws-a")
    workspace.cpu = 0.5  # half a core: E2B counts one CPU, and busy is a share of the half
    assert metric(workspace, UsageSample(at=AT, cpu=None, memory=MiB)) is None  # a run's first: no CPU figure
    point = metric(workspace, UsageSample(at=AT.replace(tzinfo=None), cpu=0.6, memory=6 << 30, disk=None))
    assert point is not None
    assert (point["cpuCount"], point["cpuUsedPct"]) == (1, 100.0)  # gVisor's own work can tip it past its share
    assert (point["memUsed"], point["diskUsed"]) == (5 << 30, 0)  # disk not measured: 0
    assert point["timestamp"].endswith("+00:00")  # a naive time is taken as UTC


def test_the_disk_figure_goes_through_the_shared_samples(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()  # through migration 0017, which adds the column
    measured = {"ws-a": Usage(cpu_seconds=1.0, memory_bytes=MiB, disk_bytes=7 * MiB), "ws-b": Usage(2.0, MiB)}
    clock = [datetime.now(UTC)]
    leader = UsageHistory(lambda: measured, 10, clock=lambda: clock[0], shared=SharedSamples(store))
    reader = UsageHistory(lambda: {}, 10, clock=lambda: clock[0], shared=SharedSamples(store), leads=lambda: False)
    leader.sample()
    clock[0] += timedelta(seconds=10)
    reader.refresh()
    assert [s.disk for s in reader.of("ws-a")] == [7 * MiB]
    assert [s.disk for s in reader.of("ws-b")] == [None]
