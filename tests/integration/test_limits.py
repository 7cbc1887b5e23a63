"""Resource limits, checked from inside real gVisor workspaces and measured from the host's cgroups."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from agentbox.client import APIError, Client

from .conftest import container_id

CGROUPS = Path("/sys/fs/cgroup")


@pytest.fixture
def make(alice: Client) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def create(**options: object) -> str:
        workspace = alice.create(**options)
        assert workspace["runtime"] == "runsc"
        made.append(str(workspace["id"]))
        return str(workspace["id"])

    yield create
    for workspace_id in made:
        alice.delete(workspace_id)


def test_writing_past_the_disk_limit_fails_inside_and_spares_the_host(
    alice: Client, make: Callable[..., str], docker_client: docker.DockerClient
) -> None:
    workspace_id = make(disk="128M")
    host_free_before = shutil.disk_usage("/").free

    result = alice.exec(workspace_id, "dd if=/dev/zero of=/workspace/big bs=1M count=400 2>&1; df -k /workspace")
    assert result["exit_code"] == 0  # df's status; dd's message is in the output
    assert "No space left on device" in result["stdout"]
    written = int(alice.exec(workspace_id, "stat -c %s /workspace/big")["stdout"])
    assert 100 << 20 < written <= 128 << 20

    # /tmp and the home directory share the same budget; the rest of the root is read-only.
    fill = "dd if=/dev/zero bs=64k count=16 of="
    result = alice.exec(workspace_id, f"{fill}/tmp/more; {fill}$HOME/more; echo x > /var/tmp/more; echo x > /x")
    assert result["exit_code"] != 0
    assert result["stderr"].count("No space left on device") == 2
    assert "Read-only file system" in result["stderr"]

    # The host spent at most the limit, whatever the workload tried.
    assert host_free_before - shutil.disk_usage("/").free < 140 << 20
    # Freeing space inside makes the workspace usable again.
    result = alice.exec(workspace_id, "rm /workspace/big && echo hello > /workspace/small && cat /workspace/small")
    assert result["stdout"] == "hello\n"


def test_a_process_allocating_past_the_memory_limit_is_killed_and_the_workspace_survives(
    alice: Client, make: Callable[..., str], server
) -> None:
    workspace_id = make(memory="256M")
    result = alice.exec(workspace_id, ["python3", "-c", "b = bytearray(1 << 30); print('allocated')"])
    assert result["exit_code"] == 137
    assert result["signal"] == "SIGKILL"
    assert "allocated" not in result["stdout"]
    # The workspace and the service are still there.
    assert alice.exec(workspace_id, "echo still here")["stdout"] == "still here\n"
    assert alice.get(workspace_id)["status"] == "running"
    assert server.health()["status"] == "ok"


def test_a_fork_bomb_is_contained_and_the_workspace_recovers(
    alice: Client, make: Callable[..., str], docker_client: docker.DockerClient
) -> None:
    workspace_id = make()
    alice.write_file(workspace_id, "/workspace/notes.txt", b"kept")
    pids = CGROUPS / "pids" / "docker" / container_id(docker_client, workspace_id)
    host_limit = int((pids / "pids.max").read_text())

    result = alice.exec(workspace_id, "bomb() { bomb | bomb & }; bomb; sleep 30", timeout=5)
    # The bomb ran into the workspace's own process limit inside the sandbox...
    assert "Cannot fork" in result["stderr"]
    # ...and the host's pids cgroup bounds what gVisor may spend on it.
    assert int((pids / "pids.peak").read_text()) <= host_limit < 20000

    # Afterwards the bomb is gone (the timeout killed its process group; gVisor may take a few
    # seconds to reap hundreds of tasks) and the workspace runs commands again, with its files,
    # without anyone starting it. (Up to a few minutes on a loaded 2-core machine: tearing down
    # hundreds of tasks under ptrace is slow.)
    deadline = time.monotonic() + 240
    while True:
        try:
            result = alice.exec(workspace_id, "cat /workspace/notes.txt; echo; ps -e | wc -l", timeout=10)
            if result["exit_code"] == 0 and int(result["stdout"].split()[-1]) < 10:
                break
        except APIError as exc:
            # While gVisor tears the bomb down (or restarts, if the bomb reached the host's limit).
            assert exc.status_code in (409, 502, 503), exc
        assert time.monotonic() < deadline, f"the workspace did not recover: {result}"
        time.sleep(1)
    assert result["stdout"].split()[0] == "kept"
    assert alice.get(workspace_id)["status"] == "running"


def test_cpu_limit_caps_what_busy_processes_get(
    alice: Client, make: Callable[..., str], docker_client: docker.DockerClient
) -> None:
    workspace_id = make(cpu=0.5)
    usage = CGROUPS / "cpuacct" / "docker" / container_id(docker_client, workspace_id) / "cpuacct.usage"
    busy = "python3 -c 'import time\nt = time.time()\nwhile time.time() - t < 4: pass' &"
    before, started = int(usage.read_text()), time.monotonic()
    alice.exec(workspace_id, f"{busy} {busy} wait")
    used = (int(usage.read_text()) - before) / 1e9 / (time.monotonic() - started)
    # Two busy processes on a 2-core host would use ~2 CPUs; the workspace gets half of one.
    assert 0.3 < used < 0.65, f"used {used:.2f} CPUs with --cpus 0.5"
