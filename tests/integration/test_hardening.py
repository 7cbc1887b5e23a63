"""Every workspace's hardened defaults, checked from inside a real workspace, under gVisor and runc."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import docker
import pytest

from agentbox.client import Client
from agentbox.sandbox import CONTROL_IN_WORKSPACE, HELPER_IN_WORKSPACE, PROCS_IN_WORKSPACE

RUNTIMES = {"gvisor": "runsc", "docker": "runc"}
# Docker writes these three per container; everything else mounted is the workspace's own.
DOCKER_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
OWN_STORAGE = {"/workspace", "/tmp", "/home/agent", PROCS_IN_WORKSPACE}  # the last: background processes


@pytest.fixture(params=sorted(RUNTIMES), scope="module")
def hardened(request: pytest.FixtureRequest, server) -> Iterator[tuple[Client, str, str]]:  # type: ignore[no-untyped-def]
    with server.client("alice") as alice:
        created = alice.create(provider=request.param)
        yield alice, created.id, request.param
        alice.delete(created.id)


def run(hardened: tuple[Client, str, str], command: str) -> str:
    client, workspace_id, _ = hardened
    result = client.exec(workspace_id, command)
    return result.stdout + result.stderr


def test_every_capability_is_dropped(hardened: tuple[Client, str, str]) -> None:
    status = dict(line.split(":\t", 1) for line in run(hardened, "cat /proc/self/status").splitlines() if ":\t" in line)
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert int(status[field], 16) == 0, (field, status[field])


def test_the_agent_is_uid_1000_with_a_writable_home_and_workspace_and_a_read_only_root(
    hardened: tuple[Client, str, str],
) -> None:
    assert run(hardened, "id -u; id -g").split() == ["1000", "1000"]
    assert run(hardened, 'echo $HOME; touch "$HOME/a" /workspace/a /tmp/a && echo writable').split() == [
        "/home/agent",
        "writable",
    ]
    # /var/tmp is world-writable on the image, so only the read-only root stops this.
    assert run(hardened, "stat -c %A /var/tmp").strip() == "drwxrwxrwt"
    assert "Read-only file system" in run(hardened, "touch /var/tmp/a")


def test_setuid_programs_grant_nothing(hardened: tuple[Client, str, str]) -> None:
    """no-new-privileges: su (setuid root) runs with the agent's uid, not root's."""
    script = (
        "(sleep 4 | su root -c true >/dev/null 2>&1 &); sleep 1.5; "
        'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = su ] && grep ^Uid: $p/status; done'
    )
    assert run(hardened, "ls -l /usr/bin/su").startswith("-rwsr-xr-x")  # a real setuid-root program
    uids = run(hardened, script).split()
    assert uids == ["Uid:", "1000", "1000", "1000", "1000"], uids  # real, effective, saved, filesystem


def test_nothing_of_the_host_is_mounted_but_the_workspace_s_own_storage(
    hardened: tuple[Client, str, str], docker_client: docker.DockerClient
) -> None:
    points = {line.split()[4] for line in run(hardened, "cat /proc/self/mountinfo").splitlines()}
    pseudo = {p for p in points if p in ("/proc", "/sys", "/dev") or p.startswith(("/proc/", "/sys/", "/dev/"))}
    assert points - pseudo <= {"/", HELPER_IN_WORKSPACE, CONTROL_IN_WORKSPACE, *OWN_STORAGE, *DOCKER_FILES}, (
        points - pseudo
    )
    assert "No such file" in run(hardened, "ls /var/run/docker.sock /run/docker.sock")
    # From the host's side: the helper (read-only), directories of the workspace's own disk, and its own
    # control directory (the helper's socket), which holds nothing else.
    _, workspace_id, _ = hardened
    mounts = docker_client.api.inspect_container(f"agentbox-{workspace_id}")["Mounts"]
    assert {m["Destination"] for m in mounts} == {HELPER_IN_WORKSPACE, CONTROL_IN_WORKSPACE, *OWN_STORAGE}
    for mount in mounts:
        assert mount["Type"] == "bind"
        if mount["Destination"] == HELPER_IN_WORKSPACE:
            assert mount["RW"] is False
        elif mount["Destination"] == CONTROL_IN_WORKSPACE:
            assert mount["Source"].endswith(f"/run/{workspace_id}"), mount
            assert run(hardened, f"ls {CONTROL_IN_WORKSPACE}").split() == ["control.sock"]
        else:
            assert f"/disks/{workspace_id}/" in mount["Source"], mount
    assert not any("docker.sock" in m["Source"] for m in mounts)


def test_a_task_limit_and_the_runtime_are_in_force(hardened: tuple[Client, str, str]) -> None:
    client, workspace_id, provider = hardened
    assert client.get(workspace_id).runtime == RUNTIMES[provider]
    if provider == "gvisor":
        # Inside the sandbox every command carries the workspace's task limit; gVisor's own kernel.
        nproc = "import resource; print(*resource.getrlimit(resource.RLIMIT_NPROC))"
        assert run(hardened, f"python3 -c '{nproc}'").split() == ["256", "256"]
        assert run(hardened, "uname -r").strip() == "4.4.0"
    else:
        assert run(hardened, "cat /sys/fs/cgroup/pids/pids.max").strip() == "256"
        assert run(hardened, "uname -r").strip() == platform.release()
