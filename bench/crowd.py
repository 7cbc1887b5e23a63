"""A crowd of suspended gVisor workspaces on one host: what each create, and what the provider's periodic
work, costs as their number grows (issue 28: hundreds of idle workspaces on one 2-core host).

    .venv/bin/python bench/crowd.py --count 300            (as root, dockerd running)

Through the Docker provider itself, built as the server builds it (server/service.py, the real settings,
a data directory and a fenced network of this run's own): N gVisor workspaces are created one after
another (`--parallel` at a time) and each is suspended (its cgroup frozen) right after its create, since
an awake idle systrap sandbox spins ~30-50 ms of CPU a second and 300 of them would saturate two cores.
At each mark (N = 0, 25, 50, 100, ... `--count`) it measures, with N present:

- the creates since the last mark (the whole create, and its parts: the firewall grant, the disk, the
  engine's create, the start until init says ready), the suspend;
- host memory per frozen workspace (MemAvailable, and the cgroups' memory), the engine's processes'
  memory (proportional set size: dockerd, containerd, a shim per workspace), loop devices, host threads,
  the iptables rules;
- one workspace's firewall change (grant + revoke), `enforce()` (the periodic check), `inventory()`,
  a usage measurement of every workspace (what the usage sampler and the idle check do every few
  seconds; and the same with an engine inspect each, as usage() did before it remembered cgroups),
  and the wake, and wake + a command, of a suspended workspace (its first command ever, and a later one);
- at the first and the last mark, the CPU used while they all sit frozen (their cgroups, the engine,
  the whole machine), and (`--burst`) a burst of concurrent creates + first exec.

Then every workspace is destroyed (timed; each thawed by its own destroy) and nothing may be left:
containers, loop devices, mounts under the data directory, firewall chains. Whatever happens, everything
it made is removed: by its deployment's label, never another's. Writes bench/results/crowd.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agentbox.config import load_settings
from agentbox.db.store import Store
from agentbox.errors import ProviderError, ProviderUnavailable
from agentbox.providers.base import Usage, WorkspaceSpec
from agentbox.providers.docker import provider as provider_module
from agentbox.providers.docker.labels import INSTANCE_LABEL, WORKSPACE_LABEL
from agentbox.providers.docker.network import mac_address, remove_network
from agentbox.providers.docker.provider import CONTAINER_PREFIX, DockerProvider
from agentbox.providers.docker.usage import cgroup_usage
from agentbox.sandbox.runtime import ExecRequest
from agentbox.server.service import Service

#: Host memory a frozen workspace is budgeted before starting (measured ~18-25 MiB), with room to spare.
BUDGET_PER_WORKSPACE = 64 << 20
#: MemAvailable never to go below while creating: the others working on this machine need it too.
KEEP_AVAILABLE = 4 << 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="workspaces to hold at once (default 300)")
    parser.add_argument("--parallel", type=int, default=1, help="creates at a time (default 1)")
    parser.add_argument("--rounds", type=int, default=15, help="samples per probe at each mark (default 15)")
    parser.add_argument("--burst", type=int, default=0, help="concurrent create + exec at the first and last mark")
    parser.add_argument("--marks", default="", help="N at which to measure, comma-separated (default 0,25,50,100..)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/crowd-data"))
    parser.add_argument("--network", default="crowd_net", help="the fenced network of this run (made and removed)")
    parser.add_argument("--memory", default="256M", help="each workspace's memory limit (default 256M)")
    # Not the burst rows' quarter CPU: under a CFS quota that small, systrap's sentry is throttled in whole
    # 100 ms periods, and a command into an awake workspace takes 100-500 ms instead of 15-35 ms.
    parser.add_argument("--cpu", default="2", help="each workspace's CPUs (default 2, the server's default)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "crowd.json")
    args = parser.parse_args()
    # Stopped from outside, it still removes everything it made (the finally of `crowd`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    marks = sorted({int(m) for m in args.marks.split(",") if m} or default_marks(args.count))
    measure_crowd(
        args.count,
        marks,
        args.parallel,
        args.rounds,
        args.burst,
        args.data_dir,
        args.network,
        args.memory,
        args.cpu,
        args.output,
    )


def measure_crowd(
    count: int = 300,
    marks: list[int] | None = None,
    parallel: int = 1,
    rounds: int = 15,
    burst: int = 20,
    data_dir: Path = Path("/tmp/crowd-data"),
    network: str = "crowd_net",
    memory: str = "256M",
    cpu: str = "2",
    output: Path = Path(__file__).parent / "results" / "crowd.json",
) -> dict[str, Any]:
    """The whole measurement (for bench/run.py too); its results, also written to `output`, as far as they got."""
    results: dict[str, Any] = {"count": count, "marks": {}, "creates": [], "machine": machine()}
    try:
        crowd(results, marks or default_marks(count), parallel, rounds, burst, data_dir, network, memory, cpu)
    finally:
        report(results, output)  # what was measured, up to whatever broke
    return results


def default_marks(count: int) -> list[int]:
    return [m for m in (0, 25, 50, 100, 150, 200, 250, 300, 400, 500) if m < count] + [count]


def crowd(
    results: dict[str, Any],
    marks: list[int],
    parallel: int,
    rounds: int,
    burst: int,
    data_dir: Path,
    network: str,
    memory: str,
    cpu: str,
) -> None:
    """Fill `results` (count, marks, creates, ...) as it goes."""
    count = results["count"]
    if data_dir.exists() and any((data_dir / "disks").glob("*")):
        raise SystemExit(f"{data_dir} holds disks of an earlier run: remove them first (nothing of others is touched)")
    os.environ.update(
        WORKSPACE_DATA_DIR=str(data_dir),
        WORKSPACE_NETWORK_NAME=network,
        WORKSPACE_DEFAULT_MEMORY=memory,
        WORKSPACE_DEFAULT_CPU=cpu,
    )
    settings = load_settings()
    service = Service.over(settings, Store(settings.sqlalchemy_url))
    provider: DockerProvider | None = None
    try:
        providers = service._docker_providers()  # exactly the server's: runtime choice, network, disks, channel
        provider = providers["gvisor"]  # type: ignore[assignment]
        assert isinstance(provider, DockerProvider)
        results["machine"]["runtime"] = provider.oci_runtime
        held: list[str] = []
        phases = instrument(provider)

        def spec() -> WorkspaceSpec:
            return WorkspaceSpec(
                id="ws-" + os.urandom(8).hex(),
                image=settings.image,
                cpu=settings.default_cpu,
                memory=settings.default_memory,
                disk=settings.default_disk,
                pids_limit=settings.pids_limit,
            )

        def one() -> dict[str, Any]:
            workspace = spec()
            began = time.perf_counter()
            ref = provider.create(workspace)
            created = time.perf_counter()
            row: dict[str, Any] = {}
            try:
                provider.suspend(ref)
            except ProviderError as exc:  # a finding, not the end: once more, else it stays awake
                print(f"!! suspending {ref} failed: {exc.detail}", flush=True)
                row["suspend_failed"] = exc.detail
                with contextlib.suppress(ProviderError):
                    provider.suspend(ref)
                    row["suspended_at_second_try"] = True
            done = time.perf_counter()
            row |= {"create_ms": ms(created - began), "suspend_ms": ms(done - created)}
            row |= {name: ms(seconds) for name, seconds in phases.pop(workspace.id, {}).items()}
            with lock:
                held.append(ref)
            return row

        lock = threading.Lock()
        available_before = meminfo("MemAvailable")
        print(f"==> {provider.oci_runtime}, {count} workspaces ({parallel} at a time), marks {marks}", flush=True)
        for mark in marks:
            while len(held) < mark:
                if meminfo("MemAvailable") - BUDGET_PER_WORKSPACE * min(parallel, mark - len(held)) < KEEP_AVAILABLE:
                    print(f"!! stopping at {len(held)}: MemAvailable is down to {KEEP_AVAILABLE >> 30} GiB", flush=True)
                    results["stopped_early"] = f"memory, at {len(held)}"
                    break
                batch = min(parallel, mark - len(held))
                try:
                    with ThreadPoolExecutor(max_workers=batch) as pool:
                        rows = list(pool.map(lambda _: one(), range(batch)))
                except Exception as exc:  # what breaks first is a finding: measure what is there, then clean up
                    print(f"!! a create failed with {len(held)} present: {exc!r}", flush=True)
                    results["stopped_early"] = f"a create failed with {len(held)} present: {exc!r}"
                    break
                for row in rows:
                    row["n"] = len(held)
                    results["creates"].append(row)
            if len(held) < mark:
                mark = len(held)
            print(f"==> {len(held)} present: measuring", flush=True)
            results["marks"][str(mark)] = measure(provider, held, rounds, available_before)
            print(json.dumps(summary_line(results, mark)), flush=True)
            if mark in (marks[0], marks[-1]) or "stopped_early" in results:
                results["marks"][str(mark)]["idle_cpu"] = idle_cpu(container_ids(provider, held))
            if burst and mark in (marks[0], marks[-1]):
                results["marks"][str(mark)]["burst"] = burst_of(provider, spec, burst)
            if "stopped_early" in results:
                break
        results["teardown"] = teardown(provider, held)
    finally:
        if provider is not None:
            results["leftovers"] = clean_up(provider, network)
        service.close()
    if not any(results.get("leftovers", {"?": [1]}).values()):
        shutil.rmtree(data_dir, ignore_errors=True)


def instrument(provider: DockerProvider) -> dict[str, dict[str, float]]:
    """Time the parts of each create, by workspace id: the firewall grant, the disk (mkfs + mount, which
    overlaps the engine's create), the engine's create, the start until init's ready line."""
    phases: dict[str, dict[str, float]] = {}

    def timed(name: str, function: Callable[..., Any], key: Callable[..., str]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases.setdefault(key(*args, **kwargs), {})[name] = time.perf_counter() - began

        return call

    assert provider.network is not None
    network = provider.network
    network.join = timed("grant_ms", network.join, lambda workspace_id, *_: workspace_id)  # type: ignore[method-assign]
    disks = provider.disks
    disks.format = timed("disk_ms", disks.format, lambda name, *_: name)  # type: ignore[method-assign]
    api = provider.client.api
    api.create_container = timed(
        "engine_create_ms", api.create_container, lambda *_, **kw: str(kw["name"]).removeprefix(CONTAINER_PREFIX)
    )
    ready = vars(provider_module)["start_and_await_ready"]
    key = lambda _, ref: ref.removeprefix(CONTAINER_PREFIX)  # noqa: E731
    setattr(provider_module, "start_and_await_ready", timed("start_ready_ms", ready, key))  # noqa: B010
    return phases


def measure(provider: DockerProvider, held: list[str], rounds: int, available_before: int) -> dict[str, Any]:
    """What the provider's periodic work and one workspace's firewall change cost with `held` present."""
    assert provider.network is not None
    firewall = provider.network.firewall
    newcomer = mac_address("ws-crowd-probe")

    def change() -> None:
        firewall.grant(newcomer, None)
        firewall.revoke(newcomer)

    found: dict[str, Any] = {
        "n": len(held),
        "firewall_change_ms": p50(timed_rounds(change, rounds)),
        "enforce_ms": p50(timed_rounds(provider.enforce, rounds)),
        "inventory_ms": p50(timed_rounds(provider.inventory, rounds)),
        "iptables_rules": len(run(["iptables-save"]).splitlines()),
        "ip6tables_rules": len(run(["ip6tables-save"]).splitlines()),
        "loop_devices_in_use": len(run(["losetup", "-a"]).splitlines()),
        "loop_device_nodes": len(list(Path("/dev").glob("loop[0-9]*"))),
        "host_threads": int(Path("/proc/loadavg").read_text().split()[3].split("/")[1]),
    }
    if held:
        few = max(3, rounds // 5)
        found["usage_all_ms"] = p50(timed_rounds(lambda: [provider.usage(ref) for ref in held], few))
        # What usage() cost before it remembered each container's cgroup: an engine inspect, then the cgroup.
        found["usage_all_inspecting_ms"] = p50(timed_rounds(lambda: [inspected_usage(provider, r) for r in held], few))
        sample = random.sample(held, min(len(held), rounds))
        # A workspace's first command costs more than the next ones (~0.3-0.6 s here under systrap, woken or
        # not); one that goes idle has been used, so its wake + command is timed after a first one.
        wakes: list[float] = []
        first_exec: list[float] = []
        wake_exec: list[float] = []
        for ref in sample:
            for samples in (first_exec, wake_exec):
                began = time.perf_counter()
                provider.wake(ref)
                woken = time.perf_counter()
                result = provider.runtime(ref).exec(ExecRequest(["true"]))
                samples.append(ms(time.perf_counter() - began))
                assert result.exit_code == 0, result
                with contextlib.suppress(ProviderError):
                    provider.suspend(ref)
            wakes.append(ms(woken - began))
        found["wake_ms"] = p50(wakes)
        found["wake_first_exec_ms"] = p50(first_exec)
        found["wake_exec_ms"] = p50(wake_exec)
        ids = container_ids(provider, held)
        memory = [cgroup_usage(container_id) for container_id in ids]
        found["cgroup_mib_per_workspace_p50"] = round(
            statistics.median(u.memory_bytes for u in memory if u is not None) / 2**20, 1
        )
        found["host_mib_per_workspace"] = round((available_before - meminfo("MemAvailable")) / len(held) / 2**20, 1)
        found["processes"] = processes()
    return found


def burst_of(provider: DockerProvider, spec: Callable[[], WorkspaceSpec], size: int) -> dict[str, float]:
    """`size` concurrent creates + first exec (each awake, then destroyed): p50 and slowest, in ms."""
    start = threading.Barrier(size)
    made: list[str] = []

    def one(_: int) -> float:
        workspace = spec()
        start.wait()
        began = time.perf_counter()
        ref = provider.create(workspace)
        made.append(ref)
        assert provider.runtime(ref).exec(ExecRequest(["true"])).exit_code == 0
        return ms(time.perf_counter() - began)

    print(f"==> a burst of {size} concurrent create + first exec", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            samples = list(pool.map(one, range(size)))
    finally:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(provider.destroy, made))
    return {"p50_ms": p50(samples), "max_ms": round(max(samples), 1)}


def idle_cpu(containers: list[str], seconds: float = 20.0) -> dict[str, float]:
    """CPU over `seconds` while every workspace sits frozen, in % of one core: the workspaces' own cgroups,
    the engine (dockerd, containerd, the shims, which live outside the containers' cgroups and are not
    frozen), and the whole machine (which counts whatever else runs here too)."""
    print(f"==> {len(containers)} frozen: CPU over {seconds:g} s", flush=True)
    engine_before, machine_before = engine_cpu_s(), machine_cpu_s()
    cgroups_before = sum(cgroup_cpu_s(c) for c in containers)
    time.sleep(seconds)
    cgroups = sum(cgroup_cpu_s(c) for c in containers) - cgroups_before
    engine = {name: (spent - engine_before[name]) / seconds * 100 for name, spent in engine_cpu_s().items()}
    return {
        "n": len(containers),
        "workspaces_percent_of_a_core": round(cgroups / seconds * 100, 2),
        "engine_percent_of_a_core": round(sum(engine.values()), 1),
        **{f"{name}_percent_of_a_core": round(percent, 2) for name, percent in engine.items()},
        "machine_percent_of_a_core": round((machine_cpu_s() - machine_before) / seconds * 100, 1),
    }


def container_ids(provider: DockerProvider, refs: list[str]) -> list[str]:
    return [str(provider.client.api.inspect_container(ref)["Id"]) for ref in refs]


def cgroup_cpu_s(container_id: str) -> float:
    usage = cgroup_usage(container_id)
    return usage.cpu_seconds if usage is not None else 0.0


def inspected_usage(provider: DockerProvider, ref: str) -> Usage | None:
    details = provider.client.api.inspect_container(ref)
    return cgroup_usage(details["Id"], details["HostConfig"].get("CgroupParent") or "")


def teardown(provider: DockerProvider, held: list[str]) -> dict[str, float]:
    """Destroy every workspace, 4 at a time; each is thawed by its own destroy, just before its removal.

    Never all woken first: 300 awake idle sandboxes want 9-15 cores of this machine's two (it was tried: the
    load went past 200 and the engine stopped answering in time)."""
    print(f"==> destroying {len(held)}", flush=True)
    late = 0

    def destroy(ref: str) -> None:
        nonlocal late
        try:
            provider.destroy(ref)
        except ProviderUnavailable:  # finished in the background, or by clean_up
            late += 1

    destroys = timed_each(destroy, held, workers=4)
    held.clear()
    return {"destroy_p50_ms": p50(destroys), "destroy_max_ms": round(max(destroys, default=0), 1), "late": late}


def clean_up(provider: DockerProvider, network: str) -> dict[str, list[str]]:
    """Remove whatever of this run's deployment is left (by its instance label), its disks, the network and its
    firewall chains; return what could not be removed (empty: nothing left)."""
    client = provider.client
    mine = {"label": [WORKSPACE_LABEL, f"{INSTANCE_LABEL}={provider.instance}"]}
    for _ in range(3):  # an engine slow to answer: removals going on in the background, then again
        left = client.api.containers(all=True, filters=mine)
        if not left:
            break
        for container in left:
            with contextlib.suppress(Exception):
                provider.destroy(CONTAINER_PREFIX + container["Labels"][WORKSPACE_LABEL])
        time.sleep(5)
    for name in provider.disks.names():
        with contextlib.suppress(Exception):
            provider.disks.destroy(name)
    provider.close()
    if provider.network is not None:
        with contextlib.suppress(Exception):
            remove_network(client, network)  # with its firewall's and egress redirect's chains
    root = str(provider.disks.root)
    tag = provider.network.firewall.tag if provider.network is not None else "-"
    return {
        "containers": [c["Names"][0] for c in client.api.containers(all=True, filters=mine)],
        "loop_devices": [line for line in run(["losetup", "-a"]).splitlines() if root in line],
        "mounts": [line for line in Path("/proc/mounts").read_text().splitlines() if root in line],
        "firewall_lines": [line for line in run(["iptables-save"]).splitlines() if tag in line]
        + [line for line in run(["ip6tables-save"]).splitlines() if tag in line],
        "networks": [n["Name"] for n in client.api.networks(names=[network]) if n["Name"] == network],
    }


def summary_line(results: dict[str, Any], mark: int) -> dict[str, Any]:
    since = [row for row in results["creates"] if row["n"] >= mark - 25]
    line = {k: v for k, v in results["marks"][str(mark)].items() if not isinstance(v, dict)}
    if since:
        line["create_p50_ms_last_25"] = p50([row["create_ms"] for row in since])
    return line


def report(results: dict[str, Any], output: Path) -> None:
    """Per mark: the creates that led to it (p50 of those made since the previous mark) and what was measured."""
    creates = results["creates"]
    previous = 0
    print(
        f"\n{'N':>5}{'create':>9}{'grant':>8}{'disk':>7}{'engine':>8}{'ready':>8}{'fw chg':>8}{'enforce':>9}"
        f"{'invent':>8}{'usage*N':>9}{'(insp.)':>9}{'wake':>6}{'wake+x':>8}{'rules':>7}{'loops':>7}{'MiB/ws':>8}"
        f"{'cg MiB':>8}"
    )
    for mark, found in results["marks"].items():
        rows = [row for row in creates if previous <= row["n"] < int(mark)] or creates[-1:]
        made = (
            {
                key: p50([row[key] for row in rows if key in row])
                for key in ("create_ms", "grant_ms", "disk_ms", "engine_create_ms", "start_ready_ms")
            }
            if rows
            else {}
        )
        found["creates_since_previous_p50"] = made
        previous = int(mark)
        print(
            f"{mark:>5}{made.get('create_ms', '-'):>9}{made.get('grant_ms', '-'):>8}{made.get('disk_ms', '-'):>7}"
            f"{made.get('engine_create_ms', '-'):>8}{made.get('start_ready_ms', '-'):>8}"
            f"{found['firewall_change_ms']:>8}{found['enforce_ms']:>9}{found['inventory_ms']:>8}"
            f"{found.get('usage_all_ms', '-'):>9}{found.get('usage_all_inspecting_ms', '-'):>9}"
            f"{found.get('wake_ms', '-'):>6}{found.get('wake_exec_ms', '-'):>8}{found['iptables_rules']:>7}"
            f"{found['loop_devices_in_use']:>7}{found.get('host_mib_per_workspace', '-'):>8}"
            f"{found.get('cgroup_mib_per_workspace_p50', '-'):>8}"
        )
    for mark, found in results["marks"].items():
        for key in ("idle_cpu", "burst", "processes"):
            if key in found:
                print(f"N={mark} {key}: {json.dumps(found[key])}")
    for key in ("teardown", "leftovers", "stopped_early"):
        if key in results:
            print(f"{key}: {json.dumps(results[key])}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {output}")


def processes() -> dict[str, float]:
    """Memory (MiB, proportional set size) of the engine's processes, and how many shims and runsc processes run."""
    found: dict[str, float] = {"dockerd_mib": 0, "containerd_mib": 0, "shims": 0, "shims_mib": 0, "runsc_processes": 0}
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            name, rss = fields["Name"].strip(), int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
            if name.startswith("containerd-shim") or name in ("dockerd", "containerd"):
                rss = pss_mib(status.parent)
            if name == "dockerd":
                found["dockerd_mib"] += rss
            elif name == "containerd":
                found["containerd_mib"] += rss
            elif name.startswith("containerd-shim"):
                found["shims"] += 1
                found["shims_mib"] += rss
            elif name.startswith("runsc") or name == "exe":
                found["runsc_processes"] += 1
    return {k: round(v, 1) for k, v in found.items()}


def pss_mib(process: Path) -> float:
    """A process's proportional set size: its own pages, and its share of those it shares (the shims'
    binary is mapped by every one of them, which resident size counts each time)."""
    for line in (process / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def engine_cpu_s() -> dict[str, float]:
    """CPU time of dockerd, containerd and the shims (together) so far, in seconds."""
    found = {"dockerd": 0.0, "containerd": 0.0, "shims": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            group = "shims" if name.startswith("containerd-shim") else name
            if group in found:
                fields = text[text.rindex(")") + 2 :].split()
                found[group] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def machine_cpu_s() -> float:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_mib": round(meminfo("MemTotal") / 2**20),
        "kernel": platform.release(),
        "iptables": run(["iptables", "--version"]).strip(),
    }


def timed_rounds(function: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        function()
        samples.append(ms(time.perf_counter() - began))
    return samples


def timed_each(function: Callable[[str], object], refs: list[str], workers: int) -> list[float]:
    def one(ref: str) -> float:
        began = time.perf_counter()
        function(ref)
        return ms(time.perf_counter() - began)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, refs))


def meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 1) if samples else float("nan")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the firewall, the disks and the cgroups need it")
    main()
