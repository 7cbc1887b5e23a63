"""Watching a directory in real gVisor, runc and E2B workspaces: it sees what commands do there, and ends when
its client leaves."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agentbox.client import APIError, Client
from agentbox.wire.files import WatchEventOut
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import eventually


def collect(events: Iterator[WatchEventOut], found: list[WatchEventOut], until: str) -> None:
    for event in events:
        found.append(event)
        if event.path.endswith(until):
            return


def test_watch_sees_files_created_by_commands(alice: Client, workspace: WorkspaceOut) -> None:
    workspace_id = workspace.id
    alice.exec(workspace_id, "mkdir -p /workspace/watched/deep")
    # It returns once the watch is in place: nothing done after it is missed.
    events = alice.watch(workspace_id, "/workspace/watched", recursive=True)
    found: list[WatchEventOut] = []
    reader = threading.Thread(target=collect, args=(events, found, "last.txt"), daemon=True)
    alice.exec(workspace_id, "echo hi > /workspace/watched/new.txt && chmod 600 /workspace/watched/new.txt")
    alice.exec(workspace_id, "echo deep > /workspace/watched/deep/inner.txt && rm /workspace/watched/new.txt")
    alice.exec(workspace_id, "touch /workspace/watched/last.txt")
    reader.start()
    reader.join(timeout=60)
    events.close()
    seen = {(e.type, e.path) for e in found}
    assert ("create", "/workspace/watched/new.txt") in seen
    assert ("write", "/workspace/watched/new.txt") in seen
    assert ("chmod", "/workspace/watched/new.txt") in seen
    assert ("create", "/workspace/watched/deep/inner.txt") in seen  # recursive
    assert ("remove", "/workspace/watched/new.txt") in seen
    assert ("create", "/workspace/watched/last.txt") in seen


def test_a_recursive_watch_sees_what_a_new_directory_already_holds(
    alice: Client, docker_workspace: WorkspaceOut
) -> None:
    # The files are made before the watch can reach their just-made directories: they are reported anyway.
    workspace_id = docker_workspace.id
    alice.exec(workspace_id, "mkdir -p /workspace/watched")
    events = alice.watch(workspace_id, "/workspace/watched", recursive=True)
    found: list[WatchEventOut] = []
    reader = threading.Thread(target=collect, args=(events, found, "last.txt"), daemon=True)
    alice.exec(workspace_id, "cd /workspace/watched && mkdir -p a/b && echo x > a/b/leaf.txt && echo y > a/top.txt")
    alice.exec(workspace_id, "touch /workspace/watched/a/b/last.txt")
    reader.start()
    reader.join(timeout=60)
    events.close()
    created = {e.path for e in found if e.type == "create"}
    assert {f"/workspace/watched/{p}" for p in ("a", "a/b", "a/b/leaf.txt", "a/top.txt", "a/b/last.txt")} <= created


def test_watch_refuses_what_it_cannot_watch(alice: Client, workspace: WorkspaceOut) -> None:
    for path, status in (("/workspace/no-such-dir", 404), ("relative", 422)):
        with pytest.raises(APIError) as refused:
            alice.watch(workspace.id, path)
        assert refused.value.status_code == status
    alice.exec(workspace.id, "touch /workspace/plain-file")
    with pytest.raises(APIError) as not_a_dir:
        alice.watch(workspace.id, "/workspace/plain-file")
    assert not_a_dir.value.status_code == 404


# inotify instances in the workspace (the helper's watch holds one; under E2B, the one envd's stand-in holds).
INOTIFY = "ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c inotify || true"


def test_a_watch_ends_when_its_client_leaves(alice: Client, workspace: WorkspaceOut) -> None:
    """Even when nothing happens in the directory: a watch never outlives the client that asked for it."""
    alice.exec(workspace.id, "mkdir -p /workspace/quiet")
    events = alice.watch(workspace.id, "/workspace/quiet")
    assert alice.exec(workspace.id, INOTIFY).stdout.strip() == "1"
    events.close()
    eventually(lambda: alice.exec(workspace.id, INOTIFY).stdout.strip() == "0", timeout=20)
