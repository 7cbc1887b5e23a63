"""Terminals over a real WebSocket into gVisor, runc and E2B workspaces, their authentication, and
`agentbox ws shell` driven through a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agentbox.cli.terminal import terminal_url
from agentbox.client import Client
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import KEYS, Server, read_until


def test_a_terminal_resizes_runs_commands_and_ends_with_its_exit(
    server: Server, alice: Client, workspace: WorkspaceOut
) -> None:
    shell = alice.start_process(workspace.id, ["sh"], pty={"cols": 80, "rows": 24})
    url = terminal_url(server.url, workspace.id, shell.pid)
    with connect(url, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as terminal:
        terminal.send(json.dumps({"cols": 91, "rows": 37}))
        terminal.send(b"stty size\n")
        assert b"37 91" in read_until(terminal, b"37 91")
        terminal.send(json.dumps({"cols": 0, "rows": 5}))  # refused, the terminal stays
        answer = terminal.recv(timeout=30)
        while isinstance(answer, bytes):  # what is left of the output (the prompt) comes first
            answer = terminal.recv(timeout=30)
        assert "error" in json.loads(answer)
        terminal.send(b"exit 7\n")
        ended = None
        for message in terminal:  # the rest of its output, then its exit, then the close
            if isinstance(message, str):
                ended = json.loads(message)
    assert ended is not None and ended["exit_code"] == 7


def test_terminals_need_a_key_or_a_token_for_that_very_process(
    server: Server, alice: Client, bob: Client, docker_workspace: WorkspaceOut
) -> None:
    workspace_id = docker_workspace.id
    shell = alice.start_process(workspace_id, ["sh"], pty={"cols": 80, "rows": 24})
    plain = alice.start_process(workspace_id, ["sleep", "1000"])
    url = terminal_url(server.url, workspace_id, shell.pid)

    def refused(address: str, **options: object) -> int:
        with pytest.raises(InvalidStatus) as refusal, connect(address, **options):  # type: ignore[arg-type]
            pass
        return refusal.value.response.status_code

    assert refused(url) == 401
    assert refused(f"{url}?token=forged") == 401
    mint = (
        httpx.post(f"{url}/token", headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=30)
        .raise_for_status()
        .json()
    )
    with connect(f"{url}?token={mint['token']}") as terminal:
        terminal.send(b"echo via-token\n")
        read_until(terminal, b"via-token\r\n")
    other_process = terminal_url(server.url, workspace_id, plain.pid)
    assert refused(f"{other_process}?token={mint['token']}") == 401  # minted for another PID
    assert refused(other_process, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) == 409
    assert refused(url, additional_headers={"Authorization": f"Bearer {KEYS['bob']}"}) == 404
    bobs_mint = httpx.post(f"{url}/token", headers={"Authorization": f"Bearer {KEYS['bob']}"}, timeout=30)
    assert bobs_mint.status_code == 404
    alice.kill(workspace_id, shell.pid)
    alice.kill(workspace_id, plain.pid)


def test_ws_shell_is_an_interactive_terminal(server: Server, alice: Client) -> None:
    workspace = alice.create()
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    env = {**os.environ, "AGENTBOX_URL": server.url, "AGENTBOX_API_KEY": KEYS["alice"], "TERM": "xterm"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "agentbox.cli", "ws", "shell", workspace.id],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    seen = b""

    def read_for(seconds: float, until: bytes | None = None) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while cli.poll() is None and time.monotonic() < deadline and (until is None or until not in seen):
            if select.select([leader], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(leader, 65536)

    try:
        read_for(60, until=b"$ ")  # typing before the prompt: a shell may discard the typeahead
        os.write(leader, b"stty size; exit 3\n")
        read_for(60)
        assert cli.wait(timeout=10) == 3, seen
        assert b"33 101" in seen
    finally:
        if cli.poll() is None:
            cli.kill()
        os.close(leader)
        alice.delete(workspace.id)
