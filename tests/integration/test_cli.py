"""The `agentbox` command as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agentbox.providers.docker.platform_choice import read_record

from .conftest import KEYS, Server


def agentbox(
    server: Server | None, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {})}
    if server is not None:
        env.update(AGENTBOX_URL=server.url, AGENTBOX_API_KEY=KEYS["alice"])
    result = subprocess.run(
        [sys.executable, "-m", "agentbox.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_ws_create_exec_cp_ls_rm(server: Server, tmp_path: Path) -> None:
    workspace_id = agentbox(server, "ws", "create", "--label", "via=cli", "--env", "NAME=cli").stdout.strip()
    assert workspace_id.startswith("ws-")
    try:
        run = agentbox(
            server, "ws", "exec", workspace_id, "--", "sh", "-c", "echo $NAME; echo oops >&2; exit 5", check=False
        )
        assert run.returncode == 5 and run.stdout == "cli\n" and "oops" in run.stderr

        local = tmp_path / "in.txt"
        local.write_bytes(b"from the host\n")
        agentbox(server, "ws", "cp", str(local), f"{workspace_id}:/workspace/in.txt")
        tree = tmp_path / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "deep.txt").write_text("deep")
        agentbox(server, "ws", "cp", str(tree), f"{workspace_id}:/workspace/tree")
        assert (
            agentbox(server, "ws", "exec", workspace_id, "--", "cat", "/workspace/tree/sub/deep.txt").stdout == "deep"
        )

        agentbox(server, "ws", "cp", f"{workspace_id}:/workspace/in.txt", str(tmp_path / "out.txt"))
        assert (tmp_path / "out.txt").read_bytes() == b"from the host\n"
        agentbox(server, "ws", "cp", f"{workspace_id}:/workspace/tree", str(tmp_path / "back"))
        assert (tmp_path / "back" / "sub" / "deep.txt").read_text() == "deep"

        assert workspace_id in agentbox(server, "ws", "ls").stdout
        assert workspace_id in agentbox(server, "ws", "ls", "-q").stdout.split()
        assert "now expires at" in agentbox(server, "ws", "extend", workspace_id, "--ttl-days", "2").stdout
        bad_ttl = agentbox(server, "ws", "extend", workspace_id, "--ttl-days", "0", check=False)
        assert bad_ttl.returncode == 2 and "--ttl-days" in bad_ttl.stderr
    finally:
        agentbox(server, "ws", "rm", workspace_id)
    assert workspace_id not in agentbox(server, "ws", "ls", "-q").stdout.split()


def test_cli_errors_name_what_to_fix(server: Server) -> None:
    no_key = subprocess.run(
        [sys.executable, "-m", "agentbox.cli", "ws", "ls"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "AGENTBOX_API_KEY"},
        timeout=60,
    )
    assert no_key.returncode == 2 and "--api-key" in no_key.stderr and "AGENTBOX_API_KEY" in no_key.stderr
    missing = agentbox(server, "ws", "exec", "ws-0000000000000000", "--", "true", check=False)
    assert missing.returncode == 1 and "no workspace" in missing.stderr
    bad_memory = agentbox(server, "ws", "create", "--memory", "4Q", check=False)
    assert bad_memory.returncode == 1 and "not a size" in bad_memory.stderr
    bad_idle = agentbox(server, "ws", "create", "--idle-timeout", "1", check=False)
    assert bad_idle.returncode == 1 and "idle_timeout" in bad_idle.stderr and "at least 2" in bad_idle.stderr
    assert "Traceback" not in no_key.stderr + missing.stderr + bad_memory.stderr + bad_idle.stderr


def test_a_command_that_times_out_says_so_and_exits_124(tmp_path: Path) -> None:
    # The server's own limit (WORKSPACE_EXEC_TIMEOUT) applies when the command names none.
    server = Server(tmp_path, env={"WORKSPACE_EXEC_TIMEOUT": "2"}).start()
    try:
        workspace_id = agentbox(server, "ws", "create", "--provider", "docker").stdout.strip()
        try:
            by_server = agentbox(server, "ws", "exec", workspace_id, "--", "sleep", "30", check=False)
            assert by_server.returncode == 124, by_server.stderr
            assert "timed out after 2." in by_server.stderr
            asked = agentbox(server, "ws", "exec", "--timeout", "1", workspace_id, "--", "sleep", "30", check=False)
            assert asked.returncode == 124 and "timed out after 1." in asked.stderr
            assert "Traceback" not in by_server.stderr + asked.stderr
        finally:
            agentbox(server, "ws", "rm", workspace_id)
    finally:
        server.stop()
    assert "WORKSPACE_EXEC_TIMEOUT" in agentbox(None, "ws", "exec", "--help", env={"COLUMNS": "200"}).stdout


def test_doctor_passes_on_this_machine() -> None:
    without_network = agentbox(None, "doctor", check=False, env={"WORKSPACE_NETWORK_NAME": ""})
    assert without_network.returncode == 1
    assert "FAIL workspace network isolation" in without_network.stdout, without_network.stdout
    assert "WORKSPACE_NETWORK_NAME=workspace_net" in without_network.stdout
    result = agentbox(None, "doctor", env={"WORKSPACE_NETWORK_NAME": "workspace_net"})
    recorded = read_record()
    assert recorded is not None, "scripts/setup-host.sh measures gVisor's platforms and records the choice"
    for check in (
        "runsc installed",
        "registered in /etc/docker/daemon.json",
        "Docker engine reachable",
        "known to the engine",
        f"probe container runs under runsc (runsc 0.0~20240729.0, platform {recorded.chosen})",
        "probe container runs under runsc-ptrace (runsc 0.0~20240729.0, platform ptrace)",
        f"runsc's platform ({recorded.chosen}) chosen for this host",
        "workspace image",
        "workspace disk limits",
        "workspace network isolation",
    ):
        assert check in result.stdout, result.stdout
    assert "FAIL" not in result.stdout


def test_cli_network_repo_and_push_options_reach_the_server(server: Server) -> None:
    both = agentbox(server, "ws", "create", "--network", "none", "--allow", "203.0.113.7", check=False)
    assert both.returncode == 2 and "one of --network" in both.stderr
    deny_alone = agentbox(server, "ws", "create", "--deny", "203.0.113.7", "--default", "maybe", check=False)
    assert deny_alone.returncode == 2 and "--default 'maybe'" in deny_alone.stderr
    allow = agentbox(server, "ws", "create", "--allow", "203.0.113.7", check=False)
    assert allow.returncode == 1 and "WORKSPACE_NETWORK_NAME" in " ".join(allow.stderr.split())
    repo = agentbox(server, "ws", "create", "--repo", "octo/hello", check=False)
    assert repo.returncode == 1 and "POST /api/v1/github/apps" in " ".join(repo.stderr.split())
    workspace_id = agentbox(server, "ws", "create", "--network", "none").stdout.strip()
    try:
        push = agentbox(server, "ws", "push", workspace_id, check=False)
        assert push.returncode == 1 and "not created with a repository" in " ".join(push.stderr.split())
    finally:
        agentbox(server, "ws", "rm", workspace_id)


def test_ws_spawn_ps_logs_kill(server: Server) -> None:
    workspace_id = agentbox(server, "ws", "create").stdout.strip()
    try:
        pid = agentbox(
            server, "ws", "spawn", workspace_id, "--tag", "greeter", "--", "sh", "-c", "echo hi; echo oops >&2"
        )
        pid = pid.stdout.strip()
        sleeper = agentbox(server, "ws", "spawn", workspace_id, "--", "sleep", "1000").stdout.strip()
        logs = agentbox(server, "ws", "logs", workspace_id, pid, "--follow")
        assert logs.stdout == "hi\n" and "oops" in logs.stderr and "exit code 0" in logs.stderr
        assert agentbox(server, "ws", "logs", workspace_id, pid, "--offset", "1").stdout == "i\n"
        listing = agentbox(server, "ws", "ps", workspace_id).stdout
        assert "greeter" in listing and sleeper in listing and "running" in listing
        agentbox(server, "ws", "kill", workspace_id, sleeper)
        assert "SIGKILL" in agentbox(server, "ws", "ps", workspace_id).stdout
        unknown = agentbox(server, "ws", "logs", workspace_id, "99999", check=False)
        assert unknown.returncode == 1 and "no such process" in unknown.stderr and "Traceback" not in unknown.stderr
    finally:
        agentbox(server, "ws", "rm", workspace_id)
