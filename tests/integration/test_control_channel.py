"""The control socket into Docker workspaces (gVisor and runc): it is used, it survives its helper being
killed, and a sandbox that dies under a command ends the command's stream instead of hanging it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agentbox.client import APIError, Client
from agentbox.wire.commands import ErrorEvent, ExitEvent, OutputEvent
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import Server, eventually

# The helper's control server and its spare worker: processes with PID 1's command line (but the
# worker that serves this very command, the shell's parent).
KILL_SERVER = """
init=$(tr '\\0' ' ' < /proc/1/cmdline)
for pid in /proc/[0-9]*; do
  [ "${pid#/proc/}" = 1 ] || [ "${pid#/proc/}" = "$PPID" ] && continue  # PID 1, and the one serving this
  [ "$(tr '\\0' ' ' < $pid/cmdline 2>/dev/null)" = "$init" ] && kill -9 "${pid#/proc/}" && echo killed
done
true
"""


def hello(server: Server, workspace_id: str) -> bytes:
    """What the workspace's control socket answers first (b"" when nothing serves it)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        try:
            sock.connect(str(server.data_dir / "run" / workspace_id / "control.sock"))
            return sock.recv(100)
        except OSError:
            return b""


@pytest.fixture(params=["gvisor", "docker"])
def docker_workspace(request: pytest.FixtureRequest, alice: Client) -> Iterator[WorkspaceOut]:
    created = alice.create(provider=request.param, network="none")  # the channel needs no network
    yield created
    alice.delete(created.id)


def test_the_socket_serves_its_own_workspace(server: Server, docker_workspace: WorkspaceOut) -> None:
    assert eventually(lambda: hello(server, docker_workspace.id)) == f"AGX1 {docker_workspace.id}\n".encode()


def test_a_killed_control_server_comes_back_and_nothing_fails_meanwhile(
    server: Server, alice: Client, docker_workspace: WorkspaceOut
) -> None:
    workspace_id = docker_workspace.id
    eventually(lambda: hello(server, workspace_id))
    assert "killed" in alice.exec(workspace_id, KILL_SERVER).stdout
    # Whatever serves it now (docker exec until init has started the server again), commands work.
    for _ in range(5):
        assert alice.exec(workspace_id, "echo still here").stdout == "still here\n"
    assert eventually(lambda: hello(server, workspace_id)) == f"AGX1 {workspace_id}\n".encode()


def test_a_sandbox_that_dies_under_a_command_ends_its_stream(
    alice: Client, docker_workspace: WorkspaceOut, docker_client: docker.DockerClient
) -> None:
    events: list[OutputEvent | ExitEvent | ErrorEvent] = []
    failure: list[Exception] = []

    def follow() -> None:
        try:
            events.extend(alice.exec_stream(docker_workspace.id, "echo started; sleep 60"))
        except Exception as exc:  # an HTTP-level end is as good as an error event, as long as it ends
            failure.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    started = time.monotonic()
    reader.start()
    eventually(lambda: any(isinstance(e, OutputEvent) for e in events), timeout=30)
    # The sandbox dies under it (not `docker kill`, which counts as a stop): it restarts by itself.
    os.kill(docker_client.api.inspect_container(f"agentbox-{docker_workspace.id}")["State"]["Pid"], signal.SIGKILL)
    reader.join(timeout=40)
    assert not reader.is_alive(), "the stream hung after the sandbox died"
    assert time.monotonic() - started < 45
    assert failure or not isinstance(events[-1], ExitEvent) or events[-1].exit_code != 0
    # It comes back (restart policy), and the next command works.
    assert eventually(lambda: answer(alice, docker_workspace.id, "echo back"), timeout=60) == "back\n"


def answer(client: Client, workspace_id: str, command: str) -> str:
    try:
        return client.exec(workspace_id, command).stdout
    except APIError:  # still coming back
        return ""


def test_the_control_directory_goes_with_the_workspace(server: Server, alice: Client) -> None:
    created = alice.create(provider="docker")
    directory: Path = server.data_dir / "run" / created.id
    assert directory.is_dir()
    alice.delete(created.id)
    assert not directory.exists()
