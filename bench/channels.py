"""The helper channel's two transports in the same run: the Unix socket against TCP (WORKSPACE_HELPER_CHANNEL).

    .venv/bin/python bench/run.py --only channels [--rounds 30]     (and a part of `make bench`)

Through the API, a server of each kind (everything else alike), samples taken by turns: exec `true`, a
1 MiB file written and read. Then the transports alone, in this process, into one workspace of the TCP
server (which has both): what the channel itself costs, without HTTP around it. Each pair's ratio is
TCP's median over the socket's (the goal: at most 1.5).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import docker
import httpx

Server = Callable[..., AbstractContextManager[httpx.Client]]
#: The measured pairs: (row, what), each measured over the socket and over TCP.
OPERATIONS = ("exec_true", "file_write_1m", "file_read_1m")


def helper_channels(server: Server, rounds: int) -> dict[str, list[float]]:
    print("==> the helper channel: Unix socket vs TCP (exec true, 1 MiB written and read)", flush=True)
    results: dict[str, list[float]] = {}
    megabyte = os.urandom(1 << 20)
    with (
        tempfile.TemporaryDirectory() as socket_dir,
        tempfile.TemporaryDirectory() as tcp_dir,
        server(Path(socket_dir)) as over_socket,
        server(Path(tcp_dir), WORKSPACE_HELPER_CHANNEL="tcp") as over_tcp,
    ):
        apis = {"socket": over_socket, "tcp": over_tcp}
        bases = {kind: f"/workspaces/{api.post('/workspaces', json={}).json()['id']}" for kind, api in apis.items()}

        def sample(name: str, call: Callable[[], object]) -> None:
            started = time.perf_counter()
            call()
            results.setdefault(name, []).append((time.perf_counter() - started) * 1000)

        def by_api(kind: str) -> dict[str, Callable[[], object]]:
            api, base = apis[kind], bases[kind]
            return {
                "exec_true": lambda: api.post(f"{base}/exec", json={"command": ["true"]}).raise_for_status(),
                "file_write_1m": lambda: api.put(
                    f"{base}/files", params={"path": "/tmp/1m"}, content=megabyte
                ).raise_for_status(),
                "file_read_1m": lambda: api.get(f"{base}/files", params={"path": "/tmp/1m"}).raise_for_status(),
            }

        calls = {kind: by_api(kind) for kind in apis}
        for call in (*calls["socket"].values(), *calls["tcp"].values()):
            call()  # warm: the first calls pay for forks and caches once
        for _ in range(rounds):
            for operation in OPERATIONS:
                for kind in ("socket", "tcp"):  # by turns: drift of the machine hits both alike
                    sample(f"channel_api_{operation}_{kind}", calls[kind][operation])

        workspace_id = bases["tcp"].rsplit("/", 1)[1]
        channels = direct_channels(Path(tcp_dir), workspace_id)
        for _ in range(rounds):
            for operation in OPERATIONS:
                for kind, channel in channels.items():
                    call = functools.partial(direct, channel, operation, megabyte)
                    sample(f"channel_direct_{operation}_{kind}", call)
        for kind, api in apis.items():
            api.delete(bases[kind])
    return results


def direct_channels(data_dir: Path, workspace_id: str) -> dict[str, object]:
    """The workspace's helper through each transport, as the server builds them (the TCP one with the key any
    replica derives from the server's secret)."""
    from agentbox.auth.tokens import server_secret
    from agentbox.sandbox.channel import HelperChannel
    from agentbox.sandbox.control import ControlSocketTransport
    from agentbox.sandbox.handshake import channel_key
    from agentbox.sandbox.tcp import TcpTransport

    container = docker.from_env().api.inspect_container(f"agentbox-{workspace_id}")
    (address,) = [n["IPAddress"] for n in container["NetworkSettings"]["Networks"].values() if n.get("IPAddress")]
    key = channel_key(server_secret("", data_dir), workspace_id)
    port = int(container["Config"]["Cmd"][container["Config"]["Cmd"].index("-T") + 1])
    return {
        "socket": HelperChannel(ControlSocketTransport(data_dir / "run" / workspace_id / "control.sock", workspace_id)),
        "tcp": HelperChannel(TcpTransport(workspace_id, key, port, lambda fresh: address)),
    }


def direct(channel: object, operation: str, megabyte: bytes) -> None:
    from agentbox.sandbox.channel import HelperChannel
    from agentbox.sandbox.runtime import ExecRequest, collect

    assert isinstance(channel, HelperChannel)
    if operation == "exec_true":
        result = collect(channel.exec_stream(ExecRequest(["true"])), 1 << 20)
        assert result.exit_code == 0, result
    elif operation == "file_write_1m":
        channel.write_file("/tmp/1m-direct", [megabyte], len(megabyte))
    else:
        _, chunks = channel.read_file("/tmp/1m-direct")
        assert sum(len(chunk) for chunk in chunks) == len(megabyte)


def ratios(results: dict[str, list[float]]) -> dict[str, float]:
    """TCP's median over the socket's, per operation and way of measuring."""
    found = {}
    for way in ("api", "direct"):
        for operation in OPERATIONS:
            socket_samples = results.get(f"channel_{way}_{operation}_socket")
            tcp_samples = results.get(f"channel_{way}_{operation}_tcp")
            if socket_samples and tcp_samples:
                ratio = statistics.median(tcp_samples) / statistics.median(socket_samples)
                found[f"channel_{way}_{operation}_tcp_over_socket_p50"] = round(ratio, 2)
    return found


def report_alone(results: dict[str, list[float]], output: Path) -> None:
    """The rows and their ratios, printed and written to `output` (`--only channels`)."""
    summary = {name: {"p50_ms": round(statistics.median(s), 2), "n": len(s)} for name, s in results.items()}
    print(f"\n{'measurement':<40}{'p50 ms':>10}")
    for name, values in summary.items():
        print(f"{name:<40}{values['p50_ms']:>10}")
    found = ratios(results)
    for name, ratio in found.items():
        print(f"{name}: {ratio}x")
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "image": os.environ.get("WORKSPACE_IMAGE", "agentbox/workspace:bookworm")}
    output.write_text(
        json.dumps({"machine": machine, "summary": summary, "ratios": found, "samples_ms": results}, indent=2)
    )
    print(f"wrote {output}")
