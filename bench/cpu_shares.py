"""Where a machine's CPU goes over a while, by who spends it: for the rows that ask what N idle workspaces cost.

"The machine's CPU" alone does not say whose it is: on this host the VM's own init (PID 1, not ours), the
kernel's memory monitor (kdamond) and the hypervisor's steal all grow with the number of sandboxes present.
The split is made from /proc: every process's user + system time (by its name, grouped), and /proc/stat for
what no process is charged with (interrupts, and time the hypervisor took, "steal").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

from agentbox.providers.docker.platform_choice import busybox_image

TICK = os.sysconf("SC_CLK_TCK")
PLAIN_LABEL = "agentbox-bench.plain"


def group_of(pid: int, name: str, parent: int, server_pids: frozenset[int]) -> str:
    if pid in server_pids or parent in server_pids:
        return "agentbox"
    if pid == 1:
        return "vm_init"  # this VM's own PID 1 (process_api here): the host's, not ours
    if parent == 2 or pid == 2:
        return "kdamond" if name.startswith("kdamond") else "kernel_threads"
    if name.startswith("containerd-shim"):
        return "shims"
    if name in ("dockerd", "containerd"):
        return name
    if name.startswith(("runsc", "exe")) or name == "agentbox-exec":
        return "sandboxes"
    return "other"


def snapshot(server_pids: frozenset[int] = frozenset()) -> dict[str, float]:
    """CPU seconds spent so far, by group; processes that end in between are lost, which is fine while idle."""
    spent: defaultdict[str, float] = defaultdict(float)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            spent[group_of(int(stat.parent.name), name, int(fields[1]), server_pids)] += (
                int(fields[11]) + int(fields[12])
            ) / TICK
    _user, _nice, _system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    spent["interrupts"] = (irq + softirq) / TICK
    spent["steal"] = steal / TICK
    return spent


def shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """% of one core per group between two snapshots, largest first."""
    spent = {group: (after[group] - before.get(group, 0.0)) / seconds * 100 for group in after}
    return {group: round(percent, 2) for group, percent in sorted(spent.items(), key=lambda item: -item[1])}


def machine_share(seconds: float, server_pids: frozenset[int] = frozenset()) -> dict[str, float]:
    """The machine's CPU over the next `seconds`, in % of one core: "machine" in all, and each group's share."""
    before, started = snapshot(server_pids), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    by_group = shares(before, snapshot(server_pids), elapsed)
    return {"machine": round(sum(by_group.values()), 1), **by_group}


def plain_containers(engine: docker.DockerClient, count: int, seconds: float = 10.0) -> dict[str, float]:
    """What `count` containers that do nothing cost this machine: busybox `sleep` under runc with no network
    of their own beyond loopback, and no agentbox. The floor below any crowd of workspaces on this engine (a
    shim per container, and what this VM's init spends per process and network namespace)."""
    print(f"==> {count} plain runc containers sleeping, for comparison", flush=True)
    image = busybox_image()

    def started(index: int) -> None:
        engine.containers.run(
            image,
            ["sleep", "3600"],
            name=f"bench-plain-{index}",
            labels={PLAIN_LABEL: "1"},
            runtime="runc",
            network_mode="none",
            detach=True,
            auto_remove=False,
        )

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(started, range(count)))
        time.sleep(3)
        return machine_share(seconds)
    finally:
        made = engine.containers.list(all=True, filters={"label": PLAIN_LABEL})
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda container: container.remove(force=True), made))
