"""A container's CPU time and memory, read from its host cgroup.

What the engine's stats call reads too, without its cost: for a gVisor container the engine asks
runsc for its events, ~0.4 s a container (measured), where these files take microseconds. The
sandbox's whole host cgroup is counted: the workload and gVisor's own kernel serving it.
"""

from __future__ import annotations

from pathlib import Path

from agentbox.providers.base import Usage

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_names(container_id: str, parent: str = "") -> tuple[str, str]:
    """Where the container's cgroup is under a hierarchy's root: with the cgroupfs driver, then with
    systemd's (`parent`: its HostConfig's CgroupParent, when it names one)."""
    parent = parent.strip("/")
    return f"{parent or 'docker'}/{container_id}", f"{parent or 'system.slice'}/docker-{container_id}.scope"


def cgroup_usage(container_id: str, parent: str = "", root: Path = CGROUP_ROOT) -> Usage | None:
    """The usage of the container `container_id` under cgroup v1 or v2 with the cgroupfs or systemd
    driver; None when its cgroup is not found there (another layout, or it is not running)."""
    for name in cgroup_names(container_id, parent):
        unified = root / name
        if (unified / "cpu.stat").is_file():
            cpu = _fields(unified / "cpu.stat")["usage_usec"] / 1e6
            memory = int((unified / "memory.current").read_text()) - _fields(unified / "memory.stat").get(
                "inactive_file", 0
            )
            return Usage(cpu_seconds=cpu, memory_bytes=max(0, memory))
        cpuacct = root / "cpuacct" / name / "cpuacct.usage"
        if cpuacct.is_file():
            memory_dir = root / "memory" / name
            memory = int((memory_dir / "memory.usage_in_bytes").read_text()) - _fields(memory_dir / "memory.stat").get(
                "total_inactive_file", 0
            )
            return Usage(cpu_seconds=int(cpuacct.read_text()) / 1e9, memory_bytes=max(0, memory))
    return None


def stats_usage(stats: dict[str, object]) -> Usage | None:
    """The usage in an engine stats answer (`GET /containers/{id}/stats`), counted as `docker stats` does."""
    cpu, memory = stats.get("cpu_stats"), stats.get("memory_stats")
    if not isinstance(cpu, dict) or not isinstance(memory, dict) or "usage" not in memory:
        return None
    details = memory.get("stats") or {}
    cache = details.get("total_inactive_file", details.get("inactive_file", 0))
    return Usage(
        cpu_seconds=cpu["cpu_usage"]["total_usage"] / 1e9, memory_bytes=max(0, int(memory["usage"]) - int(cache))
    )


def _fields(path: Path) -> dict[str, int]:
    """A cgroup file of `name value` lines."""
    found = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[name] = int(value)
    return found
