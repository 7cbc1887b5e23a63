"""Watching a directory in real gVisor and runc workspaces: it sees what commands do there."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agentbox.client import APIError, Client
from agentbox.schemas import WatchEventOut, WorkspaceOut


def collect(events: Iterator[WatchEventOut], found: list[WatchEventOut], until: str) -> None:
    for event in events:
        found.append(event)
        if event.path.endswith(until):
            return


def test_watch_sees_files_created_by_commands(alice: Client, docker_workspace: WorkspaceOut) -> None:
    workspace_id = docker_workspace.id
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


def test_watch_refuses_what_it_cannot_watch(alice: Client, docker_workspace: WorkspaceOut) -> None:
    for path, status in (("/workspace/no-such-dir", 404), ("relative", 422)):
        with pytest.raises(APIError) as refused:
            alice.watch(docker_workspace.id, path)
        assert refused.value.status_code == status
    alice.exec(docker_workspace.id, "touch /workspace/plain-file")
    with pytest.raises(APIError) as not_a_dir:
        alice.watch(docker_workspace.id, "/workspace/plain-file")
    assert not_a_dir.value.status_code == 404
