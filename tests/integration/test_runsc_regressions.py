"""Bugs of Debian's 2022 runsc that agentbox once worked around, and no longer does.

Each workaround was removed with the move to the 2024 build (docs/runtime.md); each test
here fails if its bug comes back, under every provider.
"""

from __future__ import annotations

from pathlib import Path

import docker

from agentbox.client import Client
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import container_id


def test_coreutils_ls_and_stat_work(alice: Client, workspace: WorkspaceOut) -> None:
    # 2022: statx(AT_NO_AUTOMOUNT) answered EINVAL, so coreutils' ls and stat failed ("Invalid
    # argument") and the image put busybox's first on PATH.
    ws = workspace.id
    alice.write_file(ws, "/workspace/a.txt", b"abc")
    result = alice.exec(ws, "command -v ls; command -v stat; ls -la /workspace; stat -c '%s %F' /workspace/a.txt")
    assert result.exit_code == 0 and result.stderr == "", result
    lines = result.stdout.splitlines()
    assert lines[:2] == ["/usr/bin/ls", "/usr/bin/stat"]
    assert any(line.endswith(" a.txt") and line.startswith("-rw-") for line in lines), lines
    assert lines[-1] == "3 regular file"


def test_files_and_archives_land_through_a_symlinked_directory(alice: Client, workspace: WorkspaceOut) -> None:
    # 2022: mkdir of an existing directory reached through a symlink answered EINVAL, not EEXIST,
    # so the helper looked before creating each directory of a path.
    ws = workspace.id
    alice.exec(ws, "mkdir -p /workspace/real/sub && ln -s real /workspace/link")
    alice.write_file(ws, "/workspace/link/sub/new/file.txt", b"through the link")
    assert alice.read_file(ws, "/workspace/real/sub/new/file.txt") == b"through the link"
    archive = alice.read_archive(ws, "/workspace/real")
    alice.write_archive(ws, "/workspace/link", archive)  # mkdir -p of the link itself: EEXIST, a directory
    alice.write_archive(ws, "/workspace/link/sub", archive)
    assert alice.read_file(ws, "/workspace/real/sub/sub/new/file.txt") == b"through the link"


def test_a_path_through_a_symlink_to_the_root_resolves_past_it(alice: Client, workspace: WorkspaceOut) -> None:
    # 2022: /link/etc/hostname, with link -> /, resolved to / itself.
    ws = workspace.id
    hostname = alice.exec(ws, "cat /etc/hostname").stdout
    alice.exec(ws, "ln -s / /workspace/root")
    assert alice.exec(ws, "cat /workspace/root/etc/hostname").stdout == hostname
    assert alice.read_file(ws, "/workspace/root/etc/hostname").decode() == hostname


def test_a_gvisor_workload_sees_its_memory_limit_not_the_hosts(
    alice: Client, docker_client: docker.DockerClient
) -> None:
    # 2022: MemTotal was the host's memory; since 2024 it is the sandbox's cgroup limit, which
    # holds the workspace's limit plus gVisor's headroom (docs/runtime.md), so programs that size
    # themselves by it (build tools, runtimes with a heap) stay near the limit.
    created = alice.create(provider="gvisor", memory="256M")
    try:
        memtotal = alice.exec(created.id, "grep MemTotal /proc/meminfo").stdout.split()
        seen = int(memtotal[1]) * 1024
        cgroup = Path("/sys/fs/cgroup/memory/docker") / container_id(docker_client, created.id)
        assert 256 << 20 <= seen <= int((cgroup / "memory.limit_in_bytes").read_text()), memtotal
    finally:
        alice.delete(created.id)
