"""What the dashboard's charts and lists are made of: CPU and memory samples, listening ports, capacity."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agentbox.client import APIError, Client
from agentbox.providers.base import Usage
from agentbox.providers.docker.usage import cgroup_usage, stats_usage
from agentbox.workspaces.listening import listening_ports
from agentbox.workspaces.usage import SPAN_SECONDS, UsageHistory
from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app
from tests.unit.test_api import InProcess

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_cpu_is_cores_busy_between_two_samples_and_memory_is_as_measured() -> None:
    clock, measured = Clock(), {"ws-a": Usage(cpu_seconds=10.0, memory_bytes=100 * MiB)}
    history = UsageHistory(lambda: measured, interval=10, clock=clock)
    history.sample()
    clock.advance(10)
    measured["ws-a"] = Usage(cpu_seconds=15.0, memory_bytes=120 * MiB)  # 5 s of CPU in 10 s: half a core
    history.sample()
    samples = history.of("ws-a")
    assert [(s.cpu, s.memory) for s in samples] == [(None, 100 * MiB), (0.5, 120 * MiB)]
    assert history.latest("ws-a") == samples[-1]
    assert history.of("ws-unknown") == [] and history.latest("ws-unknown") is None


def test_a_restart_or_a_stop_never_gives_a_made_up_cpu_figure() -> None:
    clock, measured = Clock(), {"ws-a": Usage(cpu_seconds=100.0, memory_bytes=MiB)}
    history = UsageHistory(lambda: dict(measured), interval=10, clock=clock)
    history.sample()
    clock.advance(10)
    measured["ws-a"] = Usage(cpu_seconds=2.0, memory_bytes=MiB)  # restarted: its counter began again
    history.sample()
    clock.advance(10)
    del measured["ws-a"]  # stopped: its chart stays
    history.sample()
    clock.advance(10)
    measured["ws-a"] = Usage(cpu_seconds=50.0, memory_bytes=MiB)  # started again: not measured against the old run
    history.sample()
    assert [s.cpu for s in history.of("ws-a")] == [None, None, None]


def test_the_history_is_an_hour_long() -> None:
    clock, measured = Clock(), {"ws-a": Usage(cpu_seconds=0.0, memory_bytes=MiB)}
    history = UsageHistory(lambda: dict(measured), interval=60, clock=clock)
    for _ in range(90):  # an hour and a half, a sample a minute
        clock.advance(60)
        history.sample()
    samples = history.of("ws-a")
    assert len(samples) == SPAN_SECONDS // 60 + 1
    assert (samples[-1].at - samples[0].at).total_seconds() == SPAN_SECONDS
    late = UsageHistory(lambda: dict(measured), interval=60, clock=clock)
    for _ in range(90):  # rounds late (every 2 minutes): still only the last hour
        clock.advance(120)
        late.sample()
    assert len(late.of("ws-a")) == SPAN_SECONDS // 120 + 1
    del measured["ws-a"]
    clock.advance(SPAN_SECONDS + 60)  # gone for over an hour: forgotten
    history.sample()
    assert history.of("ws-a") == []


def test_listening_ports_come_from_the_kernels_tables() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1\n"
        "   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1\n"
        "   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 3 1\n"
    )
    assert listening_ports(table) == {8080, 3306}  # the established connection (01) is not a listener
    six = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:1388 00000000000000000000000000000000:0000 0A\n"
    )
    assert listening_ports(six) == {5000}
    assert listening_ports("") == set()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_and_v2_are_read_as_the_engine_counts_them(tmp_path: Path) -> None:
    v1, container = tmp_path / "v1", "abc123"
    write(v1 / "cpuacct/docker" / container / "cpuacct.usage", "2500000000\n")
    write(v1 / "memory/docker" / container / "memory.usage_in_bytes", str(300 * MiB))
    write(v1 / "memory/docker" / container / "memory.stat", f"cache 5\ntotal_inactive_file {100 * MiB}\n")
    assert cgroup_usage(container, root=v1) == Usage(cpu_seconds=2.5, memory_bytes=200 * MiB)

    v2 = tmp_path / "v2"
    scope = v2 / "system.slice" / f"docker-{container}.scope"
    write(scope / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n")
    write(scope / "memory.current", str(64 * MiB))
    write(scope / "memory.stat", f"anon 1\ninactive_file {16 * MiB}\n")
    assert cgroup_usage(container, root=v2) == Usage(cpu_seconds=1.5, memory_bytes=48 * MiB)

    write(v2 / "custom" / container / "cpu.stat", "usage_usec 1000000\n")  # --cgroup-parent=custom
    write(v2 / "custom" / container / "memory.current", "4096")
    write(v2 / "custom" / container / "memory.stat", "")
    assert cgroup_usage(container, parent="/custom", root=v2) == Usage(cpu_seconds=1.0, memory_bytes=4096)
    assert cgroup_usage("elsewhere", root=v2) is None


def test_an_engine_stats_answer_is_read_as_docker_stats_reads_it() -> None:
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}},
        "memory_stats": {"usage": 50 * MiB, "stats": {"total_inactive_file": 10 * MiB}},
    }
    assert stats_usage(stats) == Usage(cpu_seconds=3.0, memory_bytes=40 * MiB)
    assert stats_usage({"cpu_stats": {}, "memory_stats": {}}) is None  # a stopped container's answer


@pytest.fixture
def served(tmp_path: Path) -> tuple[TestClient, FakeProvider]:
    provider = FakeProvider("gvisor")
    return TestClient(build_app(tmp_path, {"gvisor": provider}, WORKSPACE_MAX_CONCURRENT="7")), provider


def test_the_api_gives_usage_ports_and_capacity_to_the_owner_only(served: tuple[TestClient, FakeProvider]) -> None:
    app, provider = served
    with app:
        alice = Client("http://testserver", KEYS["alice"], transport=InProcess(app))
        bob = Client("http://testserver", KEYS["bob"], transport=InProcess(app))
        workspace = alice.create()
        service = app.app.state.service  # type: ignore[attr-defined]
        with pytest.raises(APIError) as off:  # this service measures nothing
            alice.usage(workspace.id)
        assert off.value.status_code == 404 and "WORKSPACE_USAGE_INTERVAL" in str(off.value.detail)

        clock = Clock()
        service.usage = UsageHistory(service.manager.measure, interval=5, clock=clock)
        sandbox = next(iter(provider.sandboxes.values()))
        sandbox.usage = Usage(cpu_seconds=1.0, memory_bytes=32 * MiB)
        service.usage.sample()
        clock.advance(5)
        sandbox.usage = Usage(cpu_seconds=6.0, memory_bytes=40 * MiB)
        service.usage.sample()
        usage = alice.usage(workspace.id)
        assert usage.interval == 5 and [(s.cpu, s.memory) for s in usage.samples] == [(None, 32 * MiB), (1.0, 40 * MiB)]
        latest = alice.get(workspace.id).usage
        assert latest is not None and latest.cpu == 1.0 and latest.memory == 40 * MiB
        assert [w.usage for w in alice.list()] == [latest]

        table = "sl local rem st\n0: 00000000:1F40 00000000:0000 0A\n"
        alice.write_file(workspace.id, "/proc/net/tcp", table.encode())  # the fake has no /proc/net/tcp6
        assert alice.listening_ports(workspace.id) == [8000]

        capacity = alice.capacity()
        assert (capacity.max_concurrent, capacity.active, capacity.warm_pool_size) == (7, 1, 0)

        for call in (bob.usage, bob.listening_ports):
            with pytest.raises(APIError) as hidden:
                call(workspace.id)
            assert hidden.value.status_code == 404
        alice.stop(workspace.id)
        with pytest.raises(APIError) as stopped:
            alice.listening_ports(workspace.id)
        assert stopped.value.status_code == 409
