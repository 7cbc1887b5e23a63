"""Pauses that keep a workspace's memory: gVisor's checkpoint and restore, through the engine.

The Engine API has them (experimental: dockerd runs with `"experimental": true`), docker-py does
not, so the calls are made here with its client. gVisor refuses to checkpoint a sandbox with the
host network passthrough (`--network=host`) or holding a host Unix socket, so only workspaces
without network run under the checkpointing runtime (runsc `--network=none`), and the helper's
init lets go of its control socket first (`cmd_init` in init.c).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from agentbox.errors import ProviderError
from agentbox.providers.docker.engine import engine_errors

#: The one checkpoint a paused workspace has; it goes once the workspace is resumed.
CHECKPOINT = "agentbox-pause"
#: What init takes as "close the control socket" and "listen on it again".
LET_GO_OF_SOCKET = "SIGUSR1"
LISTEN_AGAIN = "SIGUSR2"
#: How long a restore waits for containerd to let go of an earlier copy of the checkpoint.
UPLOAD_PATIENCE = 10.0


class Checkpoints:
    """The engine's checkpoints of containers, by container name or id."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._api: Any = client.api
        self._root: Path | None = None  # the engine's DockerRootDir, asked once

    def create(self, ref: str) -> None:
        """Checkpoint the container and stop it. Raises ProviderError (gVisor's refusal), WorkspaceGone."""
        with engine_errors("checkpointing the workspace"):
            url = self._api._url("/containers/{0}/checkpoints", ref)
            self._api._raise_for_status(self._api._post_json(url, data={"CheckpointID": CHECKPOINT, "Exit": True}))

    def exists(self, ref: str) -> bool:
        """Whether the container was paused with its memory. Raises ProviderError, WorkspaceGone."""
        with engine_errors("listing the workspace's checkpoints"):
            found = self._api._result(self._api._get(self._api._url("/containers/{0}/checkpoints", ref)), json=True)
        return any(entry.get("Name") == CHECKPOINT for entry in found or [])

    def restore(self, ref: str) -> None:
        """Start the container from its checkpoint. Raises ProviderError, WorkspaceGone."""
        self._start(ref, CHECKPOINT, "restoring the workspace from its checkpoint")

    def export(self, ref: str, directory: Path, name: str) -> None:
        """Checkpoint the container into `directory`/`name` (which must not exist) and leave it running (runsc's
        `--leave-running`: it is checkpointed, then restored in place). Raises ProviderError (the engine's or
        gVisor's refusal, as they said it), WorkspaceGone."""
        with engine_errors("checkpointing the workspace (leaving it running)"):
            url = self._api._url("/containers/{0}/checkpoints", ref)
            data = {"CheckpointID": name, "CheckpointDir": str(directory), "Exit": False}
            self._api._raise_for_status(self._api._post_json(url, data=data))

    def start_from(self, ref: str, directory: Path, name: str) -> None:
        """Start the (created, never started) container from a checkpoint another container exported into
        `directory`/`name`. Raises ProviderError, WorkspaceGone.

        The engine refuses a start from a checkpoint directory of the caller's ("custom checkpointdir is not
        supported", Docker 20.10), so the checkpoint is copied into the container's own checkpoints directory
        (under the engine's root: this server runs on the engine's host), where a pause's would be, and dropped
        once started."""
        with engine_errors("restoring the workspace from its snapshot's checkpoint"):
            container = self._api.inspect_container(ref)["Id"]
            if self._root is None:
                self._root = Path(self._api.info()["DockerRootDir"])
        own = self._root / "containers" / container / "checkpoints" / name
        own.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["cp", "-a", "--reflink=auto", str(directory / name), str(own)], capture_output=True, text=True
        )
        if result.returncode:
            raise ProviderError(f"copying the snapshot's checkpoint for the engine: {result.stderr.strip()}")
        # The engine hands the checkpoint to containerd as a blob named by its digest; the forks of one snapshot
        # would hand over the same blob at once and all but one be refused ("already exists", moby#42900). A
        # line naming the container (runsc reads only its own files) makes each one's blob its own.
        (own / "agentbox-restored-into").write_text(container + "\n")
        try:
            self._start(ref, name, "restoring the workspace from its snapshot's checkpoint")
        finally:
            shutil.rmtree(own, ignore_errors=True)

    def _start(self, ref: str, name: str, doing: str) -> None:
        """Start the container from its checkpoint `name`. Raises ProviderError (naming what it was `doing`),
        WorkspaceGone."""
        url = self._api._url("/containers/{0}/start", ref)
        give_up = time.monotonic() + UPLOAD_PATIENCE
        while True:
            try:
                self._api._raise_for_status(self._api._post(url, params={"checkpoint": name}))
                return
            except docker.errors.APIError as exc:
                # The engine hands the checkpoint to containerd as content; right after a checkpoint (or the
                # restore of the same snapshot before), containerd may still hold that content and refuse it
                # ("already exists", moby#42900) until its garbage collection runs, a moment later.
                if "already exists" not in str(exc.explanation) or time.monotonic() > give_up:
                    with engine_errors(doing):
                        raise
            time.sleep(0.1)

    def remove(self, ref: str) -> None:
        """Drop the checkpoint (its memory image). Raises ProviderError, WorkspaceGone."""
        with engine_errors("removing the workspace's checkpoint"):
            url = self._api._url("/containers/{0}/checkpoints/{1}", ref, CHECKPOINT)
            self._api._raise_for_status(self._api._delete(url))
