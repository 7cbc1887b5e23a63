"""The burst rows through three replicas behind one port against one replica, measured in the same run.

Each deployment is what `make run REPLICAS=N` starts: N `agentbox serve --reuse-port` processes on one
port (the kernel spreads the connections), one data directory, a PostgreSQL database of its own (the
cluster of scripts/start-postgres.sh). One replica runs on PostgreSQL too, so that the two differ in the
replicas only. The workspaces are the burst rows' (256 MiB, a quarter of a CPU), on Docker's default
bridge: the firewall's cost is the other burst rows' subject, not this one's. Bursts alternate between the
two deployments, twice each, as the other burst rows do (a burst's time drifts from one to the next).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "WORKSPACE_MAX_CONCURRENT": "200",
    "WORKSPACE_DEFAULT_MEMORY": "256M",
    "WORKSPACE_DEFAULT_CPU": "0.25",
    "WORKSPACE_RATE_LIMIT_ANONYMOUS": "1000000/minute",
}


def replica_bursts(
    size: int,
    key: str,
    create_and_exec: Callable[[httpx.Client], str],
    burst_of: Callable[[Callable[[int], str], int], tuple[list[float], list[str]]],
) -> dict[str, list[float]]:
    """`size` concurrent create + first exec, each sample one workspace's time from the burst's start to its
    first exec's answer: `burst_replicas_1` and `burst_replicas_3`."""
    print(f"==> bursts of {size} concurrent create + first exec: 3 replicas on one port vs 1 (PostgreSQL)", flush=True)
    admin = subprocess.run(
        ["bash", str(ROOT / "scripts" / "start-postgres.sh")], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    results: dict[str, list[float]] = {"burst_replicas_1": [], "burst_replicas_3": []}
    with contextlib.ExitStack() as stack:
        deployments = {count: stack.enter_context(deployment(count, admin, key)) for count in (1, 3)}
        for _ in range(2):
            for count, api in deployments.items():
                results[f"burst_replicas_{count}"] += one_burst(api, size, create_and_exec, burst_of)
    return results


def one_burst(
    api: httpx.Client,
    size: int,
    create_and_exec: Callable[[httpx.Client], str],
    burst_of: Callable[[Callable[[int], str], int], tuple[list[float], list[str]]],
) -> list[float]:
    samples, made = burst_of(lambda _: create_and_exec(api), size)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda workspace_id: api.delete(f"/workspaces/{workspace_id}"), made))
    return samples


@contextlib.contextmanager
def deployment(count: int, admin: str, key: str) -> Iterator[httpx.Client]:
    """`count` replicas on one free port over a new database; a client of that port. Removed afterwards."""
    name = f"agentbox_bench_{count}_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    processes: list[subprocess.Popen[bytes]] = []
    api = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=300)
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            **SETTINGS,
            "ENABLE_AGENT_WORKSPACES": "true",
            "WORKSPACE_DATA_DIR": data_dir,
            "WORKSPACE_API_KEYS": f"bench:{key}",
            "WORKSPACE_DATABASE_URL": admin.rsplit("/", 1)[0].replace("+psycopg", "") + f"/{name}",
        }
        try:
            for n in range(1, count + 1):  # one at a time: the first migrates the database
                command = [sys.executable, "-m", "agentbox.cli", "serve", "--port", str(port), "--reuse-port"]
                processes.append(
                    subprocess.Popen(
                        [*command, "--log-level", "warning"],
                        env=env | {"WORKSPACE_REPLICA_ID": f"r{n}"},
                        stdin=subprocess.DEVNULL,
                    )
                )
                wait_for(api, n, processes)
            yield api
        finally:
            with contextlib.suppress(httpx.HTTPError):
                for workspace in api.get("/workspaces").json()["workspaces"]:
                    api.delete(f"/workspaces/{workspace['id']}")
            api.close()
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait()
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            engine.dispose()


def wait_for(api: httpx.Client, count: int, processes: list[subprocess.Popen[bytes]]) -> None:
    """Until a replica of the port says `count` replicas are alive."""
    for _ in range(1200):
        if any(process.poll() is not None for process in processes):
            raise SystemExit("a replica exited at start-up")
        with contextlib.suppress(httpx.HTTPError):
            if len(api.get("/health").json()["replicas"]) >= count:
                return
        time.sleep(0.1)
    raise SystemExit(f"{count} replicas did not start")


def report_alone(results: dict[str, list[float]], output: Path) -> None:
    """The rows and their ratio, printed and written to `output` (`--only replicas`)."""
    summary = {
        name: {"p50_ms": round(statistics.median(s), 1), "p95_ms": round(sorted(s)[round(0.95 * (len(s) - 1))], 1)}
        | {"n": len(s)}
        for name, s in results.items()
    }
    ratio = round(summary["burst_replicas_3"]["p50_ms"] / summary["burst_replicas_1"]["p50_ms"], 2)
    for name, values in summary.items():
        print(f"{name:<20}{values['p50_ms']:>10} ms p50{values['p95_ms']:>10} ms p95 (n={values['n']})")
    print(f"burst_replicas_3_over_1_p50: {ratio}x")
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "image": os.environ.get("WORKSPACE_IMAGE", "agentbox/workspace:bookworm")}
    ratios = {"burst_replicas_3_over_1_p50": ratio}
    output.write_text(json.dumps({"machine": machine, "summary": summary, "ratios": ratios, "samples_ms": results}))
    print(f"wrote {output}")
