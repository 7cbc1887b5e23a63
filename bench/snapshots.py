"""Snapshots and forks (issue 30), on a bench server (a part of `make bench`, via run.py):
- a fork of a network-less workspace running a process, to the first command's answer in the fork
  (count=1), and in every fork (count=4); targets: p50 at most 1 s and 2.5 s;
- a snapshot of a workspace with 1 GiB written (target: at most 2 s), and the bytes it takes on the host;
- a workspace from a snapshot against a cold create, by turns (target: at most 1.2x);
- the bytes each fork's disk takes on the host, beside the snapshot it came from.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

#: Written into the workspace of the 1 GiB rows (from /dev/urandom: nothing for a copy to skip).
GIB_WRITTEN = "head -c 1073741824 /dev/urandom > /workspace/gib && sync"


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _exec(api: httpx.Client, workspace_id: str) -> None:
    api.post(f"/workspaces/{workspace_id}/exec", json={"command": ["true"]}).raise_for_status()


def _disk_bytes(data_dir: Path, workspace_id: str) -> int:
    image = data_dir / "disks" / f"{workspace_id}.img"
    return image.stat().st_blocks * 512 if image.exists() else 0


def snapshot_rows(api: httpx.Client, data_dir: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Samples in ms by row, and sizes (bytes) and whether the forks kept memory."""
    print("==> snapshots and forks: fork to first command, snapshot of 1 GiB, create from a snapshot", flush=True)
    results: dict[str, list[float]] = {}
    numbers: dict[str, float] = {}
    source = api.post("/workspaces", json={"network": "none"}).raise_for_status().json()["id"]
    try:
        api.post(f"/workspaces/{source}/processes", json={"command": ["sleep", "infinity"]}).raise_for_status()
        for count in (1, 4):
            for _ in range(rounds):
                started = time.perf_counter()
                fork = api.post(f"/workspaces/{source}/fork", json={"count": count}).raise_for_status().json()
                made = [member["id"] for member in fork["workspaces"] if member["id"]]
                if len(made) != count:
                    raise SystemExit(f"a fork of {count} made {len(made)}: {fork['workspaces']}")
                with ThreadPoolExecutor(max_workers=count) as pool:
                    list(pool.map(lambda workspace_id: _exec(api, workspace_id), made))
                results.setdefault(f"fork_{count}_to_exec", []).append(_ms(started))
                numbers["fork_memory_kept"] = float(fork["snapshot"]["memory_kept"])
                numbers["fork_disk_bytes_per_workspace"] = float(_disk_bytes(data_dir, made[0]))
                for workspace_id in made:
                    api.delete(f"/workspaces/{workspace_id}")
    finally:
        api.delete(f"/workspaces/{source}")

    big = api.post("/workspaces", json={}).raise_for_status().json()["id"]
    try:
        api.post(f"/workspaces/{big}/exec", json={"command": GIB_WRITTEN, "timeout": 600}).raise_for_status()
        for _ in range(max(3, rounds // 3)):  # each copies a GiB
            started = time.perf_counter()
            taken = api.post(f"/workspaces/{big}/snapshots", json={}).raise_for_status().json()
            results.setdefault("snapshot_1g", []).append(_ms(started))
            numbers["snapshot_1g_bytes"] = float(taken["size"])
            api.delete(f"/snapshots/{taken['id']}")
    finally:
        api.delete(f"/workspaces/{big}")

    small = api.post("/workspaces", json={}).raise_for_status().json()["id"]
    try:
        api.post(f"/workspaces/{small}/exec", json={"command": "cp -r /usr/lib/python3* /workspace/"})
        taken = api.post(f"/workspaces/{small}/snapshots", json={}).raise_for_status().json()
        numbers["snapshot_small_bytes"] = float(taken["size"])
        for _ in range(rounds):
            for row, body in (("create_from_snapshot", {"snapshot": taken["id"]}), ("create_cold_beside", {})):
                started = time.perf_counter()
                made = api.post("/workspaces", json=body).raise_for_status().json()["id"]
                results.setdefault(row, []).append(_ms(started))
                api.delete(f"/workspaces/{made}")
        api.delete(f"/snapshots/{taken['id']}")
    finally:
        api.delete(f"/workspaces/{small}")
    return results, numbers
