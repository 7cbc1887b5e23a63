"""agentbox benchmark: the API against raw Docker Engine API calls, and real work under gVisor against
runc, measured in the same run.

    make bench            (or: .venv/bin/python bench/run.py --rounds 15)

Prints a table and writes bench/results/latest.json. Starts its own server on a free port
against the local engine; removes everything it creates.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
from channels import helper_channels
from channels import ratios as channel_ratios
from channels import report_alone as report_channels
from cpu_shares import machine_share, plain_containers
from egress import egress
from egress import ratios as egress_ratios
from hostile_helper import hostile_helper
from idle_websockets import idle_websockets
from replica_bursts import replica_bursts, report_alone
from snapshots import snapshot_rows

KEY = "bench-key-0123456789abcdef"
IMAGE = os.environ.get("WORKSPACE_IMAGE", "agentbox/workspace:bookworm")
# A real project whose sdist ships its own test suite (unittest, standard library only).
PROJECT = "more-itertools==10.7.0"
CACHE = Path(__file__).parent / ".cache"
GIT = "git -c user.name=bench -c user.email=bench@localhost"
# name -> (set-up command, measured command, rounds per provider); each runs in /workspace.
WORKLOADS = {
    "test_suite": (
        "true",
        "cd more_itertools-* && python3 -m unittest -q 2>/tmp/tests.log; s=$?; tail -n 3 /tmp/tests.log; exit $s",
        3,
    ),
    "compileall": (
        "cp -r /usr/lib/python3.11 /tmp/stdlib",
        "python3 -m compileall -q -f /tmp/stdlib >/dev/null",
        5,
    ),
    "spawn_loop": (
        "git init -q /tmp/repo",
        f"cd /tmp/repo && for i in $(seq 40); do echo $i > f; git add f; {GIT} commit -qm $i; done",
        5,
    ),
}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(function: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def start_server(data_dir: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "ENABLE_AGENT_WORKSPACES": "true",
        "WORKSPACE_DATA_DIR": str(data_dir),
        "WORKSPACE_API_KEYS": f"bench:{KEY}",
        "WORKSPACE_DEFAULT_MEMORY": "512M",
        "WORKSPACE_DEFAULT_CPU": "1",
        "WORKSPACE_MAX_CONCURRENT": "100",
        # Everything comes from 127.0.0.1, E2B's envd calls and previews without an API key: not a flood.
        "WORKSPACE_RATE_LIMIT_ANONYMOUS": "1000000/minute",
        **settings,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "agentbox.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="samples per measurement (default 15)")
    parser.add_argument("--idle", type=int, default=10, help="idle workspaces for the density measurement")
    parser.add_argument(
        "--output", type=Path, help="where the results go (default results/latest.json, or results/ONLY.json)"
    )
    parser.add_argument("--only", choices=["replicas", "channels"], help="run this section alone")
    parser.add_argument("--skip-workloads", action="store_true", help="leave out the real-workload section")
    parser.add_argument(
        "--websockets", type=int, default=300, help="idle proxied WebSockets beside an API call (default 300)"
    )
    parser.add_argument("--burst", type=int, default=20, help="concurrent create+exec in the burst rows (default 20)")
    parser.add_argument(
        "--crowd", type=int, default=300, help="idle workspaces on the network for the crowded rows (default 300)"
    )
    args = parser.parse_args()
    output = args.output or Path(__file__).parent / "results" / f"{args.only or 'latest'}.json"
    if args.only == "replicas":
        report_alone(replica_bursts(args.burst, KEY, create_and_exec, burst_of), output)
        return
    if args.only == "channels":
        report_channels(helper_channels(server, args.rounds), output)
        return

    engine = docker.from_env(max_pool_size=64)  # the bursts' threads call the same URLs at once
    project = None if args.skip_workloads else download_project()
    results: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory() as cold_dir,
        tempfile.TemporaryDirectory() as warm_dir,
        tempfile.TemporaryDirectory() as ptrace_dir,
        tempfile.TemporaryDirectory() as burst_dir,
        tempfile.TemporaryDirectory() as pool_dir,
    ):
        with server(Path(cold_dir)) as api:
            runtime = api.get("/health").json()["runtime"]
            print(f"==> runtime {runtime}, image {IMAGE}, {args.rounds} rounds each", flush=True)
            results |= cold_and_exec(api, engine, runtime, args.rounds)
            results |= dashboard(str(api.base_url).rstrip("/").removesuffix("/api/v1"), engine, runtime, args.rounds)
            results |= pauses(api, args.rounds)
            results |= suspended_wakes(api, args.rounds)
            density = idle_density(api, engine, args.idle)
            snapshot_samples, snapshot_numbers = snapshot_rows(api, Path(cold_dir), args.rounds)
            results |= snapshot_samples
            density |= snapshot_numbers
            server_pid = SERVER_PIDS[str(api.base_url)]
            density |= background_processes(api, server_pid, workspaces=20, per_workspace=5)
            density |= floods(api, server_pid)
            density |= hostile_helper(api, server_pid)
            results |= idle_websockets(api, str(api.base_url).rstrip("/").removesuffix("/api/v1"), args.websockets)
            workloads = {}
            if project:
                with server(Path(ptrace_dir), WORKSPACE_GVISOR_RUNTIME="runsc-ptrace") as ptrace:
                    targets = {"gvisor": (api, "gvisor"), "runc": (api, "docker"), "ptrace": (ptrace, "gvisor")}
                    workloads = real_workloads(targets, project)
        with server(Path(warm_dir), WORKSPACE_WARM_POOL_SIZE="2") as api:
            results |= warm_claims(api, args.rounds, pool_size=2)
        results |= helper_channels(server, args.rounds)
        # Each server makes the network afresh: a workspace network belongs to one deployment.
        with fenced_network(engine), server(Path(burst_dir), **BURST_SERVER) as api:
            results |= bursts(api, engine, runtime, args.burst)
            results["list_workspaces_empty"] = timed(lambda: api.get("/workspaces").raise_for_status(), args.rounds)
            with crowd(api, args.crowd) as crowded:
                density |= crowded
                results[f"list_workspaces_{args.crowd}"] = timed(
                    lambda: api.get("/workspaces").raise_for_status(), args.rounds
                )
                results |= {
                    f"{name}_crowded": samples for name, samples in bursts(api, engine, runtime, args.burst).items()
                }
        plain = plain_containers(engine, args.crowd)
        density |= {
            "plain_containers_machine_cpu_percent_of_one_core": plain.pop("machine"),
            **{f"plain_containers_cpu_{group}_percent_of_one_core": percent for group, percent in plain.items()},
        }
        pooled = {**BURST_SERVER, "WORKSPACE_WARM_POOL_SIZE": str(args.burst)}
        with fenced_network(engine), server(Path(pool_dir), **pooled) as api:
            results |= pool_bursts(api, engine, args.burst)
        results |= firewall_changes()
        egress_samples, egress_numbers = egress(args.rounds)
        results |= egress_samples
        density |= egress_numbers
    results |= replica_bursts(args.burst, KEY, create_and_exec, burst_of)
    report(results, density, workloads, runtime, output)


#: base URL -> PID of the bench's servers (for their memory).
SERVER_PIDS: dict[str, int] = {}


@contextmanager
def server(data_dir: Path, **settings: str) -> Iterator[httpx.Client]:
    """An agentbox server of its own; every workspace it made is deleted afterwards."""
    process, url = start_server(data_dir, **settings)
    api = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    SERVER_PIDS[str(api.base_url)] = process.pid
    try:
        yield api
    finally:
        for workspace in api.get("/workspaces").json()["workspaces"]:
            api.delete(f"/workspaces/{workspace['id']}")
        api.close()
        process.terminate()
        process.wait()


def cold_and_exec(api: httpx.Client, engine: docker.DockerClient, runtime: str, rounds: int) -> dict[str, list[float]]:
    """API against raw Engine API calls, alternating sample by sample so that drift hits both alike."""
    results: dict[str, list[float]] = {"create_api": [], "create_raw": [], "exec_api": [], "exec_raw": []}
    options = {"runtime": runtime, "mem_limit": "512m", "nano_cpus": 10**9, "detach": True}

    def sample(name: str, function: Callable[[], object]) -> None:
        results.setdefault(name, []).extend(timed(function, 1))

    print("==> cold create: API vs raw `docker run -d`", flush=True)
    created: list[str] = []
    raw: list[docker.models.containers.Container] = []
    for _ in range(rounds):
        sample("create_api", lambda: created.append(api.post("/workspaces", json={}).json()["id"]))
        sample("create_raw", lambda: raw.append(engine.containers.run(IMAGE, ["sleep", "infinity"], **options)))
    for workspace_id in created[1:]:
        api.delete(f"/workspaces/{workspace_id}")
    for container in raw[1:]:
        container.remove(force=True)

    print("==> exec round trip: API vs raw Engine API exec", flush=True)
    workspace_id, target = created[0], raw[0]

    def raw_exec() -> None:
        exec_id = engine.api.exec_create(target.id, ["true"])["Id"]
        engine.api.exec_start(exec_id)
        engine.api.exec_inspect(exec_id)

    for _ in range(rounds):
        sample("exec_api", lambda: api.post(f"/workspaces/{workspace_id}/exec", json={"command": ["true"]}))
        sample("exec_raw", raw_exec)

    results |= agent_tools(api, workspace_id, rounds)
    results |= e2b_sdk(str(api.base_url).rstrip("/").removesuffix("/api/v1"), rounds)

    print("==> a 1 MiB file written and read through the API", flush=True)
    megabyte, files = os.urandom(1 << 20), f"/workspaces/{workspace_id}/files"
    for _ in range(rounds):
        sample("file_write_1m", lambda: api.put(files, params={"path": "/tmp/1m"}, content=megabyte).raise_for_status())
        sample("file_read_1m", lambda: api.get(files, params={"path": "/tmp/1m"}).raise_for_status())
    api.delete(f"/workspaces/{workspace_id}")
    target.remove(force=True)
    return results


def pauses(api: httpx.Client, rounds: int) -> dict[str, list[float]]:
    """Pause and resume (to the first command after it) with the memory kept (a workspace without network:
    a gVisor checkpoint) and with files only (one with network: a stop and a boot), each running a process."""
    print("==> pause and resume: with memory (no network) and files only (network)", flush=True)
    results: dict[str, list[float]] = {}
    for kind, network in (("memory", "none"), ("files", "egress")):
        base = f"/workspaces/{api.post('/workspaces', json={'network': network}).json()['id']}"
        sleeper = api.post(f"{base}/processes", json={"command": ["sleep", "infinity"]}).json()["pid"]
        for _ in range(rounds):
            started = time.perf_counter()
            kept = api.post(f"{base}/pause").json()["memory_kept"]
            results.setdefault(f"pause_{kind}", []).append((time.perf_counter() - started) * 1000)
            if kept != (kind == "memory"):
                raise SystemExit(f"a pause of a workspace with network {network!r} said memory_kept={kept}")
            started = time.perf_counter()
            api.post(f"{base}/start").raise_for_status()
            api.post(f"{base}/exec", json={"command": ["true"]}).raise_for_status()
            results.setdefault(f"resume_{kind}", []).append((time.perf_counter() - started) * 1000)
            if kind == "memory" and api.get(f"{base}/processes/{sleeper}").json()["status"] != "running":
                raise SystemExit("a resume that should have restored memory booted afresh (its process is gone)")
            if kind == "files":  # a boot: the next round's process
                sleeper = api.post(f"{base}/processes", json={"command": ["sleep", "infinity"]}).json()["pid"]
        api.delete(base)
    return results


def dashboard(root: str, engine: docker.DockerClient, runtime: str, rounds: int) -> dict[str, list[float]]:
    """What a dashboard user waits for, in Debian's headless Chromium: the workspace list drawn after a
    reload, and a workspace made with the form until `echo` answers in its terminal (the form, the
    page, the shell and its WebSocket: to set against create_api + exec_api). And what the usage
    sampler pays per workspace: its cgroup read against the engine's stats call."""
    from playwright.sync_api import sync_playwright

    from agentbox.providers.docker.usage import cgroup_usage

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tests.browser import launch

    print("==> the dashboard in Chromium: list, create to terminal output; usage: cgroup vs engine stats", flush=True)
    results: dict[str, list[float]] = {"dashboard_list": [], "dashboard_create_to_terminal": []}
    api = httpx.Client(base_url=f"{root}/api/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1366, "height": 860})
        page.goto(f"{root}/ui/")
        page.get_by_label("API key").fill(KEY)
        page.get_by_role("button", name="Sign in").click()

        # Waits poll on each frame (Playwright's own waits for text back off to 1 s between looks).
        def shown(script: str) -> None:
            page.wait_for_function(script, polling="raf", timeout=60_000)

        for _ in range(rounds):
            page.goto(f"{root}/ui/#/")
            steps = [time.perf_counter()]
            page.get_by_role("button", name="Create workspace").click()
            shown("() => document.querySelector('[role=status]')?.textContent.startsWith('Created ws-')")
            steps.append(time.perf_counter())
            workspace_id = page.locator("[role=status]").first.inner_text().split()[1]
            page.click(f"a[href='#/w/{workspace_id}']")
            shown("() => document.querySelector('[role=status]')?.textContent.startsWith('Shell (PID')")
            steps.append(time.perf_counter())
            page.click("#terminal .xterm-screen")
            page.keyboard.type("echo ready-$((40 + 2))\n")
            shown("() => document.querySelector('.xterm-rows')?.textContent.includes('ready-42')")
            steps.append(time.perf_counter())
            names = ("dashboard_create", "dashboard_open_terminal", "dashboard_echo")
            for name, begun, ended in zip(names, steps, steps[1:], strict=False):
                results.setdefault(name, []).append((ended - begun) * 1000)
            results["dashboard_create_to_terminal"].append((steps[-1] - steps[0]) * 1000)
            page.goto(f"{root}/ui/#/")
            started = time.perf_counter()
            page.reload()
            shown(f"() => document.querySelector(\"tr[data-workspace='{workspace_id}']\") !== null")
            results["dashboard_list"].append((time.perf_counter() - started) * 1000)
            api.delete(f"/workspaces/{workspace_id}").raise_for_status()
        results["dashboard_keystroke"] = _keystrokes(page, root, api, rounds)
        results["terminal_socket_echo"] = _socket_echoes(root, api, rounds)
        browser.close()
    api.close()
    container = engine.containers.run(IMAGE, ["sleep", "infinity"], runtime=runtime, detach=True)
    try:
        results["usage_cgroup"] = timed(lambda: cgroup_usage(container.id), rounds)
        results["usage_engine_stats"] = timed(
            lambda: engine.api.stats(container.id, stream=False, one_shot=True), rounds
        )
    finally:
        container.remove(force=True)
    return results


def _keystrokes(page: Any, root: str, api: httpx.Client, rounds: int) -> list[float]:
    """A key's echo in the dashboard's terminal, timed in the page: keydown to the echoed character drawn."""
    workspace_id = api.post("/workspaces", json={}).raise_for_status().json()["id"]
    page.goto(f"{root}/ui/#/w/{workspace_id}/terminal")
    page.wait_for_function("() => document.querySelector('.xterm-rows')?.textContent.includes('$')", polling="raf")
    page.click("#terminal .xterm-screen")
    page.evaluate(
        """() => {
            window.echoes = [];
            let pressed = 0, typed = '', key = '';
            const rows = document.querySelector('.xterm-rows');
            document.addEventListener('keydown', (e) => { pressed = performance.now(); key = e.key; }, true);
            new MutationObserver(() => {
                if (key && rows.textContent.includes('$ ' + typed + key)) {
                    window.echoes.push(performance.now() - pressed);
                    typed += key;
                    key = '';
                }
            }).observe(rows, {subtree: true, childList: true, characterData: true});
        }"""
    )
    for i in range(rounds):
        page.keyboard.press("abcdefghijklmnopqrstuvwxyz"[i % 26])
        page.wait_for_function(f"() => window.echoes.length > {i}", polling="raf")
    echoes: list[float] = page.evaluate("window.echoes")
    api.delete(f"/workspaces/{workspace_id}").raise_for_status()
    return echoes


def _socket_echoes(root: str, api: httpx.Client, rounds: int) -> list[float]:
    """A byte's echo through the terminal WebSocket alone (`cat` on a PTY), for a client outside a browser."""
    from websockets.sync.client import connect

    workspace_id = api.post("/workspaces", json={}).raise_for_status().json()["id"]
    base = f"/workspaces/{workspace_id}/processes"
    pid = api.post(base, json={"command": ["cat"], "pty": {"cols": 80, "rows": 24}}).raise_for_status().json()["pid"]
    token = api.post(f"{base}/{pid}/terminal/token").raise_for_status().json()["token"]
    echoes = []
    with connect(f"{root.replace('http', 'ws', 1)}/api/v1{base}/{pid}/terminal?token={token}") as socket:
        for _ in range(rounds):
            started = time.perf_counter()
            socket.send(b"x")
            while b"x" not in socket.recv():
                pass
            echoes.append((time.perf_counter() - started) * 1000)
    api.delete(f"/workspaces/{workspace_id}").raise_for_status()
    return echoes


def agent_tools(api: httpx.Client, workspace_id: str, rounds: int) -> dict[str, list[float]]:
    """The calls an agent makes, each alone and twenty in a row (a loop: read, edit, run, search), in a
    running gVisor workspace; and a page fetched through a port preview."""
    print("==> agent tools: file tools, search, a shell session, a port preview", flush=True)
    base = f"/workspaces/{workspace_id}"
    source = "".join(f"def function_{i}(x):\n    return x + {i}\n\n" for i in range(70))
    api.post(f"{base}/tools/write", json={"path": "/workspace/app/module.py", "content": source}).raise_for_status()
    api.post(f"{base}/exec", json={"command": "cp -r /usr/lib/python3.11/json /usr/lib/python3.11/email /workspace/"})
    session = api.post(f"{base}/sessions", json={}).raise_for_status().json()["session_id"]
    api.post(f"{base}/processes", json={"command": "python3 -m http.server 8000 --bind 127.0.0.1", "cwd": "/workspace"})
    calls: dict[str, Callable[[int], httpx.Response]] = {
        "tool_read": lambda _: api.post(f"{base}/tools/read", json={"path": "/workspace/app/module.py"}),
        "tool_edit": lambda i: api.post(
            f"{base}/tools/edit",
            json={"path": "/workspace/app/module.py", "old_string": f"x + {i % 70}\n", "new_string": f"x + {i % 70}\n"},
        ),
        "tool_glob": lambda _: api.post(f"{base}/tools/glob", json={"pattern": "**/*.py"}),
        "tool_grep": lambda _: api.post(f"{base}/tools/grep", json={"pattern": r"def \w+\(", "limit": 100}),
        "session_run": lambda _: api.post(f"{base}/sessions/{session}/run", json={"command": "true"}),
        "preview_get": lambda _: api.get(f"{base}/ports/8000/app/module.py"),
    }
    while api.get(f"{base}/ports/8000/").status_code != 200:
        time.sleep(0.2)
    results: dict[str, list[float]] = {name: [] for name in calls}
    for name, call in calls.items():
        for i in range(rounds):
            started = time.perf_counter()
            call(i).raise_for_status()
            results[name].append((time.perf_counter() - started) * 1000)
    loop = ["tool_read", "tool_edit", "session_run", "tool_grep", "tool_read"] * 4
    results["agent_loop_20_calls"] = timed(lambda: [calls[name](i) for i, name in enumerate(loop)], max(3, rounds // 3))
    return results


def e2b_sdk(root: str, rounds: int) -> dict[str, list[float]]:
    """Code written for E2B's SDK, unmodified, against this server: a sandbox made and its first command
    run (`base` template, gVisor), then commands and a file written and read one after another."""
    print("==> E2B's SDK against agentbox's endpoint", flush=True)
    # The SDK's own variables, for these calls only: servers the bench starts later inherit its environment.
    sdk_env = {"E2B_API_URL": f"{root}/e2b", "E2B_SANDBOX_URL": f"{root}/e2b/envd", "E2B_API_KEY": KEY}
    saved = {name: os.environ.get(name) for name in sdk_env}
    os.environ |= sdk_env
    try:
        return _e2b_calls(rounds)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _e2b_calls(rounds: int) -> dict[str, list[float]]:
    from e2b import Sandbox

    results: dict[str, list[float]] = {}
    made: list[Sandbox] = []

    def first_command() -> None:
        made.append(Sandbox.create(timeout=600))
        made[-1].commands.run("true")

    results["e2b_create_first_command"] = timed(first_command, max(3, rounds // 3))
    sandbox = made[-1]
    results["e2b_run"] = timed(lambda: sandbox.commands.run("true"), rounds)
    results["e2b_write_read_1k"] = timed(
        lambda: sandbox.files.write("bench.txt", "x" * 1024) and sandbox.files.read("bench.txt"), rounds
    )
    # A watcher's events wait in the workspace and any replica takes them: a change made, then seen.
    sandbox.files.make_dir("watched")
    watcher = sandbox.files.watch_dir("watched")

    def change_seen() -> None:
        sandbox.files.write("watched/note.txt", "x")
        while not any(event.name == "note.txt" for event in watcher.get_new_events()):
            pass

    results["e2b_watch_change_seen"] = timed(change_seen, rounds)
    watcher.stop()
    for each in made:
        each.kill()
    results |= _code_interpreter_calls(rounds)
    return results


def _code_interpreter_calls(rounds: int) -> dict[str, list[float]]:
    """E2B's code interpreter SDK: a sandbox made and its first code run (the interpreter started on
    demand), then code run one after another in the same context."""
    from e2b_code_interpreter import Sandbox

    made: list[Sandbox] = []

    def first_code() -> None:
        made.append(Sandbox.create(timeout=600))
        made[-1].run_code("x = 1")

    results = {"e2b_create_first_code": timed(first_code, max(3, rounds // 3))}
    results["e2b_run_code"] = timed(lambda: made[-1].run_code("x + 1"), rounds)
    for each in made:
        each.kill()
    return results


BENCH_NETWORK = "agentbox-bench-net"
# The burst's workspaces: 256 MiB and a quarter of a CPU each, the server's defaults for it (so
# that a pool of them serves a create that asks for nothing).
BURST_SERVER = {
    "WORKSPACE_NETWORK_NAME": BENCH_NETWORK,
    "WORKSPACE_MAX_CONCURRENT": "400",
    "WORKSPACE_IDLE_CHECK_INTERVAL": "0.5",
    "WORKSPACE_DEFAULT_MEMORY": "256M",
    "WORKSPACE_DEFAULT_CPU": "0.25",
}


@contextmanager
def fenced_network(engine: docker.DockerClient) -> Iterator[None]:
    """The burst runs on a fenced workspace network (the server makes it); removed afterwards."""
    from agentbox.providers.docker.network import remove_network

    try:
        yield
    finally:
        # The server's last deletes may still be with the engine (a removal answered late goes on in the
        # background): the network is removed once no container is left on it.
        give_up = time.monotonic() + 60
        with contextlib.suppress(docker.errors.NotFound):
            while engine.api.inspect_network(BENCH_NETWORK).get("Containers") and time.monotonic() < give_up:
                time.sleep(0.5)
        try:
            remove_network(engine, BENCH_NETWORK)  # with its firewall's and egress redirect's chains
        except docker.errors.APIError as exc:  # an endpoint the engine kept with no container: the bench goes on
            print(f"    warning: {BENCH_NETWORK} not removed ({exc.explanation}); restart dockerd", flush=True)


def bursts(api: httpx.Client, engine: docker.DockerClient, runtime: str, size: int) -> dict[str, list[float]]:
    """`size` concurrent create + first exec (256 MiB, 0.25 CPU each): through the API on the fenced
    network, the same straight through the Engine API on the same bridge, then from a full pool.

    Each sample is one workspace's time from the burst's start to its first exec's answer.
    """
    print(f"==> bursts of {size} concurrent create + first exec: API (fenced network) vs raw Engine API", flush=True)

    def raw_one(_: int) -> str:
        container = engine.containers.run(
            IMAGE,
            ["sleep", "infinity"],
            runtime=runtime,
            mem_limit="256m",
            nano_cpus=int(0.25e9),
            network=BENCH_NETWORK,
            detach=True,
        )
        exec_id = engine.api.exec_create(container.id, ["true"])["Id"]
        engine.api.exec_start(exec_id)
        return str(container.id)

    results: dict[str, list[float]] = {"burst_raw": [], "burst_api": []}
    # Alternated, twice each: a burst's time drifts by 15% from one to the next on this machine.
    for _ in range(2):
        for name, one, remove in (
            ("burst_raw", raw_one, lambda ref: engine.api.remove_container(ref, force=True)),
            ("burst_api", lambda _: create_and_exec(api), lambda ref: api.delete(f"/workspaces/{ref}")),
        ):
            samples, made = burst_of(one, size)
            results[name] += samples
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(remove, made))
    return results


@contextmanager
def crowd(api: httpx.Client, count: int) -> Iterator[dict[str, float]]:
    """`count` idle gVisor workspaces on the fenced network, each with its firewall grant, suspended once idle
    (idle_timeout 2 s): what they cost the machine while they wait (its CPU over 10 s, host memory each),
    for the crowded rows measured inside the block."""
    print(f"==> {count} idle gVisor workspaces on the fenced network, suspended when idle", flush=True)
    available_before = meminfo("MemAvailable")

    def idle(_: int) -> str:
        created = api.post("/workspaces", json={"idle_timeout": 2})
        created.raise_for_status()
        return str(created.json()["id"])

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        made = list(pool.map(idle, range(count)))
    made_in = time.monotonic() - started
    try:
        while sum(w["suspended"] for w in api.get("/workspaces").json()["workspaces"]) < count:
            time.sleep(1)
        time.sleep(2)
        cpu = machine_share(10, frozenset({os.getpid(), *SERVER_PIDS.values()}))
        yield {
            "crowd_workspaces": count,
            "crowd_created_in_s": round(made_in, 1),
            "crowd_machine_cpu_percent_of_one_core": cpu.pop("machine"),
            **{f"crowd_cpu_{group}_percent_of_one_core": percent for group, percent in cpu.items()},
            "crowd_host_mib_per_workspace": round((available_before - meminfo("MemAvailable")) / count / 2**20, 1),
        }
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda workspace_id: api.delete(f"/workspaces/{workspace_id}"), made))


def machine_cpu_ms() -> float:
    """CPU time spent on this machine so far, all CPUs, all processes (not idle, not waiting on I/O)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) * 1000 / os.sysconf("SC_CLK_TCK")


def pool_bursts(api: httpx.Client, engine: docker.DockerClient, size: int) -> dict[str, list[float]]:
    """The burst against a full warm pool of `size`; then claims alone, and the Engine API's own floor:
    `size` concurrent raw execs into the claimed (running) sandboxes."""
    print(f"==> the burst from a warm pool of {size}; claims alone; raw execs into them", flush=True)

    def full_pool() -> None:
        while pool_ready(api) < size:
            time.sleep(0.5)
        time.sleep(2)  # let the last boots settle

    def claim(_: int) -> str:
        return str(api.post("/workspaces", json={}).raise_for_status().json()["id"])

    full_pool()
    cpu_before, wall_before = machine_cpu_ms(), time.perf_counter()
    results = {"burst_pool": burst_of(lambda _: create_and_exec(api), size)[0]}
    # The whole machine's CPU time over the burst (server, sandboxes, engine, this client): what bounds it.
    results["burst_pool_machine_cpu"] = [machine_cpu_ms() - cpu_before]
    results["burst_pool_wall"] = [(time.perf_counter() - wall_before) * 1000]
    full_pool()
    results["burst_pool_claim"], claimed = burst_of(claim, size)

    def raw_exec(i: int) -> str:
        exec_id = engine.api.exec_create(f"agentbox-{claimed[i]}", ["true"])["Id"]
        engine.api.exec_start(exec_id)
        return claimed[i]

    results["burst_exec_raw"] = burst_of(raw_exec, size)[0]
    for workspace_id in api.get("/workspaces").json()["workspaces"]:
        api.delete(f"/workspaces/{workspace_id['id']}")
    return results


def firewall_changes() -> dict[str, list[float]]:
    """One workspace's firewall grant + revoke, and the periodic check of the whole firewall (nothing missing),
    with 1 and with 200 other workspaces on the network (real iptables, both families, on the chains of a
    bridge that does not exist). In blocks of 10 rounds, 1 and 200 by turns, so that both see the same load of
    the machine; one network at a time, since the check reads the whole filter table."""
    from agentbox.providers.docker.firewall import ALWAYS_BLOCKED, Firewall
    from agentbox.providers.docker.network import mac_address

    print("==> firewall: a grant + revoke and the periodic check, with 1 and 200 workspaces on the network", flush=True)
    results: dict[str, list[float]] = {}
    rules = Firewall(bridge="abx-bench0", tag="abxbench0000", blocked=ALWAYS_BLOCKED, resolvers=())
    try:
        for others in (1, 200) * 3:
            rules.adopt({mac_address(f"ws-{i}"): None for i in range(others)})
            for _ in range(10):
                began = time.perf_counter()
                rules.grant(mac_address("ws-new"), ["203.0.113.7/32"])
                rules.revoke(mac_address("ws-new"))
                results.setdefault(f"firewall_{others}", []).append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                rules.restore()
                results.setdefault(f"firewall_check_{others}", []).append((time.perf_counter() - began) * 1000)
    finally:
        rules.remove()
    return results


def create_and_exec(api: httpx.Client) -> str:
    created = api.post("/workspaces", json={})
    created.raise_for_status()
    workspace_id = str(created.json()["id"])
    api.post(f"/workspaces/{workspace_id}/exec", json={"command": ["true"]}).raise_for_status()
    return workspace_id


def burst_of(one: Callable[[int], str], size: int) -> tuple[list[float], list[str]]:
    """Run `one` `size` times at once; (milliseconds each took from the common start, what each made)."""
    start = threading.Barrier(size)

    def timed_one(i: int) -> tuple[float, str]:
        start.wait()
        began = time.perf_counter()
        made = one(i)
        return (time.perf_counter() - began) * 1000, made

    with ThreadPoolExecutor(max_workers=size) as pool:
        done = list(pool.map(timed_one, range(size)))
    return [ms for ms, _ in done], [made for _, made in done]


def warm_claims(api: httpx.Client, rounds: int, pool_size: int) -> dict[str, list[float]]:
    """Create latency when the pool is full and idle (waits for the refill between rounds), and the time
    to interactive: the claim and its first command's output."""
    print("==> warm-pool claim through the API, and its first command", flush=True)
    results: dict[str, list[float]] = {"claim_api": [], "interactive_pool": []}
    for _ in range(rounds):
        while pool_ready(api) < pool_size:
            time.sleep(0.1)
        time.sleep(0.2)  # let the refill's last writes settle
        started = time.perf_counter()
        workspace = api.post("/workspaces", json={}).json()
        results["claim_api"].append((time.perf_counter() - started) * 1000)
        api.post(f"/workspaces/{workspace['id']}/exec", json={"command": ["echo", "ready"]}).raise_for_status()
        results["interactive_pool"].append((time.perf_counter() - started) * 1000)
        api.delete(f"/workspaces/{workspace['id']}")
    return results


def suspended_wakes(api: httpx.Client, rounds: int) -> dict[str, list[float]]:
    """The first command on a suspended workspace (its wake, then the command) against the next one, awake, on
    the same workspace in the same round; and against a first command after the same wait on a workspace that
    never suspends (idle_timeout 0), since a sandbox left alone a while answers its next call slower anyway."""
    print("==> the first command on a suspended workspace, and the next", flush=True)
    results: dict[str, list[float]] = {"exec_suspended": [], "exec_awake": [], "exec_idle_never_suspended": []}
    sleepy = api.post("/workspaces", json={"idle_timeout": 2}).json()
    never = api.post("/workspaces", json={"idle_timeout": 0}).json()
    try:
        for round_ in range(rounds):
            while not api.get(f"/workspaces/{sleepy['id']}").json()["suspended"]:
                time.sleep(0.1)
            rows = [("exec_suspended", sleepy), ("exec_awake", sleepy)]
            # The one that never suspends goes first in one round and last in the next.
            rows.insert(0 if round_ % 2 else 2, ("exec_idle_never_suspended", never))
            for row, workspace in rows:
                started = time.perf_counter()
                api.post(f"/workspaces/{workspace['id']}/exec", json={"command": ["true"]}).raise_for_status()
                results[row].append((time.perf_counter() - started) * 1000)
    finally:
        api.delete(f"/workspaces/{sleepy['id']}")
        api.delete(f"/workspaces/{never['id']}")
    return results


def pool_ready(api: httpx.Client) -> float:
    metrics = httpx.get(str(api.base_url).removesuffix("/api/v1/") + "/metrics", headers=api.headers).text
    for line in metrics.splitlines():
        if line.startswith("agentbox_pool_ready "):
            return float(line.split()[1])
    return 0.0


def idle_density(api: httpx.Client, engine: docker.DockerClient, count: int) -> dict[str, float]:
    """Memory and CPU per idle workspace, from their cgroups and from the host's MemAvailable."""
    print(f"==> {count} idle workspaces: memory per workspace", flush=True)
    available_before = meminfo("MemAvailable")
    ids = [api.post("/workspaces", json={}).json()["id"] for _ in range(count)]
    time.sleep(5)  # let them settle
    containers = [engine.api.inspect_container(f"agentbox-{workspace_id}")["Id"] for workspace_id in ids]
    cgroup_bytes = [int(cgroup(c, "memory", "memory.usage_in_bytes")) for c in containers]
    per_workspace_host = (available_before - meminfo("MemAvailable")) / count
    cpu_before, started = [cgroup(c, "cpuacct", "cpuacct.usage") for c in containers], time.monotonic()
    time.sleep(10)
    elapsed = time.monotonic() - started
    cpu = [
        (cgroup(c, "cpuacct", "cpuacct.usage") - b) / 1e9 / elapsed for c, b in zip(containers, cpu_before, strict=True)
    ]
    for workspace_id in ids:
        api.delete(f"/workspaces/{workspace_id}")
    per_workspace_cgroup = statistics.median(cgroup_bytes)
    return {
        "idle_workspaces": count,
        "cgroup_mib_per_workspace_p50": round(per_workspace_cgroup / 2**20, 1),
        "host_mib_per_workspace": round(per_workspace_host / 2**20, 1),
        "host_available_mib": round(available_before / 2**20),
        "fit_by_memory": int(available_before / max(per_workspace_host, per_workspace_cgroup)),
        "idle_cpu_percent_per_workspace_p50": round(statistics.median(cpu) * 100, 2),
        "fit_by_cpu": int((os.cpu_count() or 1) / max(statistics.median(cpu), 1e-6)),
    }


def server_memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, the high-water mark of resident) of process `pid`, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def background_processes(api: httpx.Client, server_pid: int, workspaces: int, per_workspace: int) -> dict[str, float]:
    """`workspaces` x `per_workspace` background processes, each followed by a client of its own to its end:
    every byte must arrive; the server's memory is written down."""
    count = workspaces * per_workspace
    print(f"==> {count} background processes across {workspaces} workspaces, each followed", flush=True)
    script = "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo line $i of this background process; done"
    expected = sum(len(f"line {i} of this background process\n") for i in range(1, 2001))
    ids = [api.post("/workspaces", json={}).raise_for_status().json()["id"] for _ in range(workspaces)]
    rss_before, hwm_before = server_memory_mib(server_pid)
    limits = httpx.Limits(max_connections=count + 10)
    with httpx.Client(base_url=api.base_url, headers=api.headers, timeout=300, limits=limits) as followers:

        def follow(i: int) -> str:
            workspace_id = ids[i % workspaces]
            pid = api.post(f"/workspaces/{workspace_id}/processes", json={"command": script}).raise_for_status()
            url = f"/workspaces/{workspace_id}/processes/{pid.json()['pid']}/output"
            received, ended = 0, False
            with followers.stream("GET", url, params={"follow": True}) as lines:
                for line in lines.iter_lines():
                    event = json.loads(line) if line else {}
                    received += len(event.get("data", "").encode())
                    ended = ended or "exit_code" in event
            return f"{received} {ended}"

        timings, outcomes = burst_of(follow, count)
    rss_after, hwm_after = server_memory_mib(server_pid)
    for workspace_id in ids:
        api.delete(f"/workspaces/{workspace_id}")
    delivered = [int(outcome.split()[0]) for outcome in outcomes]
    return {
        "background_processes": count,
        "background_all_delivered": int(all(d == expected for d in delivered) and all("True" in o for o in outcomes)),
        "background_bytes_lost": sum(expected - d for d in delivered),
        "background_followed_s_p50": round(statistics.median(timings) / 1000, 2),
        "background_server_rss_growth_mib": round(rss_after - rss_before, 1),
        "background_server_peak_growth_mib": round(hwm_after - hwm_before, 1),
    }


def floods(api: httpx.Client, server_pid: int) -> dict[str, float]:
    """1 GiB of stdout through exec and through a followed background process: the server's peak memory growth."""
    print("==> 1 GiB floods through exec and a followed process: server memory", flush=True)
    workspace_id = api.post("/workspaces", json={}).raise_for_status().json()["id"]
    flood = "head -c 1073741824 /dev/zero"
    found: dict[str, float] = {}
    for name in ("exec", "process"):
        _, peak_before = server_memory_mib(server_pid)
        if name == "exec":
            api.post(f"/workspaces/{workspace_id}/exec", json={"command": flood}).raise_for_status()
        else:
            pid = api.post(f"/workspaces/{workspace_id}/processes", json={"command": flood}).json()["pid"]
            url = f"/workspaces/{workspace_id}/processes/{pid}/output"
            with api.stream("GET", url, params={"follow": True}) as lines:
                for _ in lines.iter_bytes():
                    pass
        found[f"flood_{name}_server_peak_growth_mib"] = round(server_memory_mib(server_pid)[1] - peak_before, 1)
    api.delete(f"/workspaces/{workspace_id}")
    return found


def download_project() -> bytes:
    """The project's sdist as a plain tar, fetched with pip at set-up (once: it is cached)."""
    CACHE.mkdir(exist_ok=True)
    name, version = PROJECT.split("==")
    found = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if not found:
        print(f"==> downloading the sdist of {PROJECT} (pip, once)", flush=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, "--disable-pip-version-check", "-d", str(CACHE), PROJECT], check=True)
        found = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    return gzip.decompress(found[0].read_bytes())


# Where each real workload runs: a label -> (server, provider). "ptrace" is the gVisor fallback
# platform (the only one Debian's 2022 runsc had), served by a second server of its own.
Targets = dict[str, tuple[httpx.Client, str]]


def real_workloads(targets: Targets, project: bytes) -> dict[str, dict[str, float]]:
    """Real work side by side in a workspace of each target, alternating round by round.

    Workspaces get the spec's default size (2 CPUs, 4 GiB), what a user who asks for nothing gets.
    """
    print(f"==> real workloads: {PROJECT}'s own tests, compileall of the stdlib, 40 git commits", flush=True)
    size = {"cpu": 2, "memory": "4G"}
    workspaces = {
        label: (api, api.post("/workspaces", json={"provider": provider, **size}).json()["id"])
        for label, (api, provider) in targets.items()
    }
    results: dict[str, dict[str, float]] = {}
    try:
        for api, workspace_id in workspaces.values():
            response = api.put(f"/workspaces/{workspace_id}/archive", params={"path": "/workspace"}, content=project)
            response.raise_for_status()
        for name, (setup, command, rounds) in WORKLOADS.items():
            samples: dict[str, list[float]] = {label: [] for label in workspaces}
            for api, workspace_id in workspaces.values():
                run_in(api, workspace_id, setup)
            for _ in range(rounds):
                for label, (api, workspace_id) in workspaces.items():
                    started = time.perf_counter()
                    output = run_in(api, workspace_id, command)
                    samples[label].append(time.perf_counter() - started)
            medians = {label: statistics.median(s) for label, s in samples.items()}
            row = {f"{label}_s": round(median, 2) for label, median in medians.items()}
            row["gvisor_over_runc"] = round(medians["gvisor"] / medians["runc"], 2)
            if "ptrace" in medians:
                row["gvisor_over_ptrace"] = round(medians["gvisor"] / medians["ptrace"], 2)
            results[name] = row
            detail = output.strip().splitlines()[-1] if output.strip() else ""
            print(f"    {name}: {row}  {detail}", flush=True)
    finally:
        for api, workspace_id in workspaces.values():
            api.delete(f"/workspaces/{workspace_id}")
    return results


def run_in(api: httpx.Client, workspace_id: str, command: str) -> str:
    body = {"command": command, "cwd": "/workspace", "timeout": 600}
    result = api.post(f"/workspaces/{workspace_id}/exec", json=body).json()
    if result.get("exit_code") != 0:
        raise SystemExit(f"workload failed in {workspace_id}: {command!r} -> {result}")
    return str(result["stdout"])


def cgroup(container: str, controller: str, name: str) -> int:
    return int(Path(f"/sys/fs/cgroup/{controller}/docker/{container}/{name}").read_text())


def meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def report(
    results: dict[str, list[float]],
    density: dict[str, float],
    workloads: dict[str, dict[str, float]],
    runtime: str,
    output: Path,
) -> None:
    summary = {
        name: {"p50_ms": round(statistics.median(s), 1), "p95_ms": round(percentile(s, 0.95), 1), "n": len(s)}
        for name, s in results.items()
    }
    ratios = {
        "create_api_over_raw_p50": round(summary["create_api"]["p50_ms"] / summary["create_raw"]["p50_ms"], 2),
        "exec_api_over_raw_p50": round(summary["exec_api"]["p50_ms"] / summary["exec_raw"]["p50_ms"], 2),
        "claim_over_cold_create_p50": round(summary["claim_api"]["p50_ms"] / summary["create_api"]["p50_ms"], 3),
        "e2b_run_over_exec_api_p50": round(summary["e2b_run"]["p50_ms"] / summary["exec_api"]["p50_ms"], 2),
        "dashboard_create_to_terminal_over_api_create_exec_p50": round(
            summary["dashboard_create_to_terminal"]["p50_ms"]
            / (summary["create_api"]["p50_ms"] + summary["exec_api"]["p50_ms"]),
            2,
        ),
        "usage_engine_stats_over_cgroup_p50": round(  # from the samples: a cgroup read rounds to 0.0 ms
            statistics.median(results["usage_engine_stats"]) / statistics.median(results["usage_cgroup"])
        ),
        "exec_suspended_over_awake_p50": round(
            summary["exec_suspended"]["p50_ms"] / summary["exec_awake"]["p50_ms"], 2
        ),
        "resume_memory_over_files_p50": round(
            summary["resume_memory"]["p50_ms"] / summary["resume_files"]["p50_ms"], 2
        ),
    }
    idle = [name for name in summary if name.startswith("get_workspace_") and name != "get_workspace_no_websockets"]
    if idle and "get_workspace_no_websockets" in summary:
        ratios[f"{idle[0]}_over_none_p50"] = round(
            summary[idle[0]]["p50_ms"] / summary["get_workspace_no_websockets"]["p50_ms"], 2
        )
    for crowded in ("", "_crowded"):
        if f"burst_api{crowded}" in summary:
            ratios[f"burst_api_over_raw{crowded}_p50"] = round(
                summary[f"burst_api{crowded}"]["p50_ms"] / summary[f"burst_raw{crowded}"]["p50_ms"], 2
            )
    if "burst_api_crowded" in summary:  # the same burst with the idle crowd present, against none
        ratios["burst_api_crowded_over_empty_p50"] = round(
            summary["burst_api_crowded"]["p50_ms"] / summary["burst_api"]["p50_ms"], 2
        )
    if "create_from_snapshot" in summary:
        ratios["create_from_snapshot_over_cold_p50"] = round(
            summary["create_from_snapshot"]["p50_ms"] / summary["create_cold_beside"]["p50_ms"], 2
        )
    if "exec_suspended" in summary:
        ratios["exec_suspended_over_idle_never_suspended_p50"] = round(
            summary["exec_suspended"]["p50_ms"] / summary["exec_idle_never_suspended"]["p50_ms"], 2
        )
    if "plain_containers_machine_cpu_percent_of_one_core" in density:  # the floor of this engine and VM
        ratios["crowd_cpu_over_plain_containers"] = round(
            density["crowd_machine_cpu_percent_of_one_core"]
            / density["plain_containers_machine_cpu_percent_of_one_core"],
            2,
        )
    if "burst_replicas_1" in summary:
        ratios["burst_replicas_3_over_1_p50"] = round(
            summary["burst_replicas_3"]["p50_ms"] / summary["burst_replicas_1"]["p50_ms"], 2
        )
    ratios |= channel_ratios(results)
    ratios |= egress_ratios(results, density)
    for firewall in ("firewall", "firewall_check"):
        if f"{firewall}_200" in summary:
            ratios[f"{firewall}_200_over_1_p50"] = round(
                summary[f"{firewall}_200"]["p50_ms"] / summary[f"{firewall}_1"]["p50_ms"], 2
            )
    print(f"\n{'measurement':<20}{'p50 ms':>10}{'p95 ms':>10}")
    for name, values in summary.items():
        print(f"{name:<20}{values['p50_ms']:>10}{values['p95_ms']:>10}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio}{' ms' if '_minus_' in name else 'x'}")  # a difference, or a ratio
    for name, value in density.items():
        print(f"{name}: {value}")
    if workloads:
        header = f"{'real workload':<14}{'gvisor s':>10}{'runc s':>10}{'ptrace s':>10}{'/runc':>8}{'/ptrace':>9}"
        print(f"\n{header}  (gvisor = runsc on systrap; ptrace = the same runsc on ptrace)")
        for name, row in workloads.items():
            print(
                f"{name:<14}{row['gvisor_s']:>10}{row['runc_s']:>10}{row.get('ptrace_s', '-'):>10}"
                f"{row['gvisor_over_runc']:>7}x{row.get('gvisor_over_ptrace', '-'):>8}x"
            )
    machine = {
        "cpus": os.cpu_count(),
        "memory_mib": round(meminfo("MemTotal") / 2**20),
        "kernel": platform.release(),
        "runtime": runtime,
        "docker": docker.from_env().version().get("Version"),
        "image": IMAGE,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "machine": machine,
                "summary": summary,
                "ratios": ratios,
                "density": density,
                "workloads": workloads,
                "samples_ms": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
