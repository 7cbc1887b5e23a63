"""E2B's sandbox metrics on agentbox's E2B endpoint, through the unmodified `e2b` SDK: `get_metrics()` (sync
and async) gives the points agentbox samples (every 2 s on the session's server), with the sandbox's own
CPUs, memory and disk, a busy CPU and a written file seen in them, bounded by the time range asked;
another owner's key finds no sandbox; the cases of E2B's own SDK tests (tests/*/sandbox_*/test_metrics.py)
run as they do against E2B's cloud."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox, SandboxMetrics, SandboxNotFoundException

from agentbox.client import Client
from agentbox.wire.sizes import parse_size

from .conftest import KEYS, eventually

MiB = 1 << 20


@pytest.fixture
def sandbox(sdk: str) -> Iterator[Sandbox]:
    made = Sandbox.create(timeout=300)
    yield made
    made.kill()


def now() -> datetime:
    return datetime.now(UTC)


def test_metrics_show_the_sandbox_busy_within_its_limits(sdk: str, sandbox: Sandbox, alice: Client) -> None:
    began = now()
    # Some seconds of a busy core, then a 24 MiB file on its disk.
    sandbox.commands.run(
        "timeout 6 sh -c 'while :; do :; done'; head -c 25165824 /dev/urandom > /home/user/blob", timeout=60
    )

    def busy_and_written() -> list[SandboxMetrics]:
        points = sandbox.get_metrics()
        seen_busy = any(p.cpu_used_pct > 25 for p in points)
        return points if seen_busy and points[-1].disk_used >= 24 * MiB else []

    points = eventually(busy_and_written, timeout=60, interval=0.5)
    asked_until = now()

    workspace = alice.get(sandbox.sandbox_id)
    info = sandbox.get_info()
    memory, disk = parse_size(workspace.memory), parse_size(workspace.disk)
    assert info.cpu_count == max(1, int(workspace.cpu)) and info.memory_mb == memory // MiB
    for point in points:
        assert point.cpu_count == info.cpu_count
        assert (point.mem_total, point.disk_total) == (memory, disk)
        assert 0 <= point.cpu_used_pct <= 100
        assert 0 < point.mem_used <= memory
        assert 0 <= point.disk_used <= disk
        assert point.timestamp.tzinfo is not None
    stamps = [p.timestamp for p in points]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    # A range that holds the points: what falls in it, whole seconds included at both ends.
    start, end = stamps[0], stamps[-1]
    ranged = sandbox.get_metrics(start=start, end=end)
    assert ranged and all(int(start.timestamp()) <= p.timestamp.timestamp() < int(end.timestamp()) + 1 for p in ranged)
    assert [p.timestamp for p in ranged] == [s for s in stamps if int(start.timestamp()) <= s.timestamp()]
    # From the second point on: the first is left out (the samples are 2 s apart, so in an earlier second).
    later = sandbox.get_metrics(start=stamps[1], end=asked_until)
    assert [p.timestamp for p in later][: len(stamps) - 1] == stamps[1:]

    # A range that excludes everything: before the sandbox was made, and after now.
    assert sandbox.get_metrics(start=began - timedelta(hours=1), end=began - timedelta(minutes=30)) == []
    assert sandbox.get_metrics(start=now() + timedelta(minutes=5)) == []

    # The class form, and the async SDK on the same route.
    assert Sandbox.get_metrics(sandbox.sandbox_id, start=start, end=end) == ranged

    async def from_async() -> list[SandboxMetrics]:
        connected = await AsyncSandbox.connect(sandbox.sandbox_id)
        return await connected.get_metrics(start=start, end=end)

    assert asyncio.run(from_async()) == ranged

    # E2B's several-sandboxes route: each one's latest point, the caller's sandboxes only.
    with httpx.Client(base_url=f"{sdk}/e2b", timeout=30) as raw:
        ids = {"sandbox_ids": f"{sandbox.sandbox_id},nope"}
        mine = raw.get("/sandboxes/metrics", params=ids, headers={"X-API-Key": KEYS["alice"]})
        assert mine.status_code == 200 and list(mine.json()["sandboxes"]) == [sandbox.sandbox_id]
        latest = mine.json()["sandboxes"][sandbox.sandbox_id]
        assert latest["timestampUnix"] >= int(end.timestamp()) and latest["memTotal"] == memory
        theirs = raw.get("/sandboxes/metrics", params=ids, headers={"X-API-Key": KEYS["bob"]})
        assert (theirs.status_code, theirs.json()) == (200, {"sandboxes": {}})
        backwards = raw.get(
            f"/sandboxes/{sandbox.sandbox_id}/metrics",
            params={"start": int(end.timestamp()), "end": int(start.timestamp()) - 1},
            headers={"X-API-Key": KEYS["alice"]},
        )
        assert backwards.status_code == 400 and "start" in backwards.json()["message"]


def test_another_owners_key_and_a_killed_sandbox_get_e2bs_404(sdk: str) -> None:
    sandbox = Sandbox.create(timeout=120)
    try:
        eventually(sandbox.get_metrics, timeout=60, interval=0.5)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_metrics(sandbox.sandbox_id, api_key=KEYS["bob"])
    finally:
        sandbox.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics(sandbox.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics("no-such-sandbox")


# The cases of E2B's SDK tests (packages/python-sdk/tests/{sync,async}/sandbox_*/test_metrics.py), their
# logic run here: the same waits (60 tries, 0.5 s apart), the same checks, the same 10 s of slack.


def _e2b_sbx_metrics(get_metrics: Callable[..., list[SandboxMetrics]]) -> None:
    metrics: list[SandboxMetrics] = []
    for _ in range(60):
        metrics = get_metrics()
        if metrics:
            break
        time.sleep(0.5)
    assert metrics
    first = metrics[0]
    fields = ("cpu_count", "cpu_used_pct", "mem_used", "mem_total", "disk_used", "disk_total")
    assert all(getattr(first, name) is not None for name in fields)


def _e2b_sbx_metrics_time_range(started: datetime, get_metrics: Callable[..., list[SandboxMetrics]]) -> None:
    metrics: list[SandboxMetrics] = []
    until = started
    for _ in range(60):
        until = now()
        metrics = get_metrics(start=started, end=until)
        if metrics:
            break
        time.sleep(0.5)
    assert metrics
    slack = 10
    for point in metrics:
        assert started.timestamp() - slack <= point.timestamp.timestamp() <= until.timestamp() + slack
    assert get_metrics(start=started - timedelta(hours=1), end=started - timedelta(minutes=30)) == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("case", ["test_sbx_metrics", "test_sbx_metrics_time_range"])
def test_e2b_sdk_metrics_cases(sdk: str, flavour: str, case: str) -> None:
    started = now()
    made: Any = Sandbox.create(timeout=60) if flavour == "sync" else asyncio.run(AsyncSandbox.create(timeout=60))

    def get_metrics(**kwargs: Any) -> list[SandboxMetrics]:
        if flavour == "sync":
            answer: list[SandboxMetrics] = made.get_metrics(**kwargs)
            return answer

        # A fresh async sandbox object each time: its HTTP client belongs to the loop it was made in.
        async def fetch() -> list[SandboxMetrics]:
            connected = await AsyncSandbox.connect(made.sandbox_id)
            points: list[SandboxMetrics] = await connected.get_metrics(**kwargs)
            return points

        return asyncio.run(fetch())

    try:
        if case == "test_sbx_metrics":
            _e2b_sbx_metrics(get_metrics)
        else:
            _e2b_sbx_metrics_time_range(started, get_metrics)
    finally:
        Sandbox.kill(made.sandbox_id)
