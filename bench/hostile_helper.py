"""A hostile helper: a workload replaces its helper's control socket and announces a 4 GiB frame.

`hostile_helper(api, server_pid)` makes a gVisor workspace whose workload unlinks
/.agentbox/run/control.sock and listens there itself: to every call it says the hello the host
expects, then announces a stdout frame of 4 GiB and sends bytes after it. Meanwhile the calls
the dashboard polls (a file, a directory, a command, the listening ports, the processes) go on,
and the server's resident memory is sampled every few milliseconds. The acceptance is a peak
growth of at most 16 MiB, and no 500 among the answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

#: `python3 hostile.py WORKSPACE_ID frame`: the hello, then a 4 GiB frame (the integration tests' hostile helper).
HOSTILE = (Path(__file__).parents[1] / "tests" / "integration" / "data" / "hostile_helper.py").read_bytes()
ROUNDS = 5


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def hostile_helper(api: httpx.Client, server_pid: int) -> dict[str, float]:
    """The server's peak memory growth (MiB) while a workspace's helper announces a 4 GiB frame."""
    print("==> a hostile helper announces a 4 GiB frame: server memory", flush=True)
    created = api.post("/workspaces", json={"provider": "gvisor", "network": "none"}).raise_for_status()
    workspace_id = created.json()["id"]
    base = f"/workspaces/{workspace_id}"
    polls: list[Callable[[], httpx.Response]] = [
        lambda: api.get(f"{base}/files", params={"path": "/etc/hostname"}),
        lambda: api.get(f"{base}/files", params={"path": "/workspace"}),
        lambda: api.post(f"{base}/exec", json={"command": "echo hi"}),
        lambda: api.get(f"{base}/ports"),
        lambda: api.get(f"{base}/processes"),
    ]
    try:
        api.put(f"{base}/files", params={"path": "/tmp/hostile.py"}, content=HOSTILE).raise_for_status()
        before = resident_mib(server_pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], resident_mib(server_pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        statuses: list[int] = []
        try:
            command = ["python3", "/tmp/hostile.py", workspace_id, "frame"]
            api.post(f"{base}/processes", json={"command": command}).raise_for_status()
            # Until the hostile listener answers every poll (it binds within a second or so), then ROUNDS more.
            deadline, hostile_rounds = time.monotonic() + 60, 0
            while hostile_rounds < ROUNDS and time.monotonic() < deadline:
                answers = [poll().status_code for poll in polls]
                if all(status >= 400 for status in answers):
                    hostile_rounds += 1
                    statuses += answers
        finally:
            done.set()
            sampler.join()
        peak[0] = max(peak[0], resident_mib(server_pid))
    finally:
        api.delete(base)
    return {
        "hostile_helper_peak_growth_mib": round(peak[0] - before, 1),
        "hostile_helper_calls_refused": len(statuses),
        "hostile_helper_500s": sum(status == 500 for status in statuses),
    }
