"""A workload that replaces its helper: its own listener on the control socket, a correct hello, then lies.

The workload runs as the helper's user (uid 1000) in a real gVisor workspace, so it can unlink
/.agentbox/run/control.sock and bind its own server there; the host then reaches that server
for every call into the workspace. Whatever it announces, what the dashboard polls (a file,
a directory, a command, the listening ports, the processes) must fail with a clear error,
never a 500, and the server must hold no more memory than a call's small bounds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentbox.client import APIError, Client

from .conftest import Server, eventually

#: Run in the workspace as `python3 hostile.py WORKSPACE_ID MODE` (see the file).
HOSTILE = (Path(__file__).parent / "data" / "hostile_helper.py").read_bytes()
#: How much the server's resident memory may grow while it is under attack: a 4 GB file's worth
#: retained would pass it a hundredfold. What it does grow by is mostly an exec's output, held up to
#: the exec's own limit (10 MiB by default, as for any command), and what the worker threads' malloc
#: arenas keep of what they freed: a fresh server in CI grew 18.5 MiB, against 16 MiB before.
GROWTH = 32 << 20


def resident(pid: int) -> int:
    """The process's resident memory in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakMemory:
    """Samples a process's resident memory every few milliseconds while in use: the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = resident(pid)
        self.peak = self.before
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, resident(self.pid))

    def __enter__(self) -> PeakMemory:
        self._sampler.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._sampler.join()
        self.peak = max(self.peak, resident(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.before


def control_socket(server: Server, workspace_id: str) -> Path:
    return server.data_dir / "run" / workspace_id / "control.sock"


def hijack(server: Server, client: Client, workspace_id: str, mode: str) -> None:
    """Start the hostile listener in the workspace; return once the host's socket path leads to it."""
    path = control_socket(server, workspace_id)
    genuine = eventually(lambda: path.exists() and os.stat(path).st_ino)
    client.write_file(workspace_id, "/tmp/hostile.py", HOSTILE)
    client.start_process(workspace_id, ["python3", "/tmp/hostile.py", workspace_id, mode])
    # A new socket in the helper's place (a new inode): the workload could replace it.
    eventually(lambda: path.exists() and os.stat(path).st_ino != genuine, timeout=30)


@pytest.fixture
def gvisor(alice: Client) -> Iterator[str]:
    created = alice.create(provider="gvisor", network="none")  # the attack needs no network
    yield created.id
    with contextlib.suppress(APIError):
        alice.delete(created.id)


def polls(client: Client, workspace_id: str) -> dict[str, Callable[[], object]]:
    """What the dashboard asks of a workspace it shows (a file's content when one is opened)."""
    return {
        "file": lambda: client.read_file(workspace_id, "/etc/hostname"),
        "listing": lambda: client.list_dir(workspace_id, "/workspace"),
        "exec": lambda: client.exec(workspace_id, "echo hi"),
        "ports": lambda: client.listening_ports(workspace_id),
        "processes": lambda: client.processes(workspace_id),
    }


@pytest.mark.parametrize(
    ("mode", "asked"),
    [
        ("frame", ["file", "listing", "exec", "ports", "processes"]),
        # To an exec, lines that never end are plain output, as from any command that floods its
        # stdout: kept up to the exec's own limit and cut there (test_hostile.py's stdout flood).
        ("line", ["file", "listing", "ports", "processes"]),
        # A 4 GB file is a file (streamed to whoever asked for one); a socket table of 4 GB is not.
        ("file", ["exec", "ports", "processes"]),
    ],
)
def test_a_workload_that_replaces_its_helper_fails_only_its_own_calls(
    server: Server, alice: Client, gvisor: str, mode: str, asked: list[str]
) -> None:
    assert server.process is not None
    hijack(server, alice, gvisor, mode)
    failures: dict[str, APIError] = {}

    def poll_all() -> None:
        for name in asked:
            call = polls(alice, gvisor)[name]
            with pytest.raises(APIError) as failure:
                call()
            failures[name] = failure.value

    # A first round first: what the server allocates once (a worker thread, a code path's first use)
    # is not the attack; what the attack could make it keep would grow with every round after.
    poll_all()
    started = time.monotonic()
    with PeakMemory(server.process.pid) as memory:
        for _ in range(3):  # as the dashboard polls: again and again
            poll_all()
    elapsed = time.monotonic() - started
    assert memory.growth <= GROWTH, f"the server grew by {memory.growth / 2**20:.1f} MiB under attack"
    assert elapsed < 60, f"{3 * len(asked)} calls took {elapsed:.0f} s"
    for name, error in failures.items():
        assert 400 <= error.status_code < 600 and error.status_code != 500, (name, error)
        # The hostile listener was the one used (not a fallback): the error names the helper's fault.
        assert isinstance(error.detail, str) and "helper" in error.detail, (name, error.detail)
        assert "stop and start the workspace" in error.detail.lower(), (name, error.detail)
    # The server itself is unharmed: another of alice's workspaces, and the API, still answer.
    assert alice.get(gvisor).status == "running"
