"""The helper channel over TCP for Docker workspaces (WORKSPACE_HELPER_CHANNEL=tcp): keys and addresses.

A workspace with a network gets a TCP listener from its helper (agentbox-exec `init -K -T -U`), and
the server reaches it at the container's address on its network, after the handshake of
sandbox/handshake.py. Its key is derived from the server's secret and the workspace id (any
replica derives it, none stores it); the sandbox's copy is a file only root may read:

    host:      WORKSPACE_DATA_DIR/secrets/<workspace id>/helper-key   (directory 0700, file 0400, root's)
    workspace: /.agentbox/secret/helper-key                             (the same directory, bind-mounted read-only)

The container starts as root so that its init can read it, and init becomes the workspace's user
at once (before the ready line, before any command); a Kubernetes Secret volume (defaultMode 0400)
mounted at the same place is the same arrangement. Workspaces without network have no address:
they keep the Unix socket (and `docker exec`), and their containers start as the workspace's user
with no key, as under WORKSPACE_HELPER_CHANNEL=socket.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentbox.sandbox.handshake import channel_key, key_file_text

#: Where the sandbox finds the key (a directory of its own, like a Kubernetes Secret volume).
SECRET_IN_WORKSPACE = "/.agentbox/secret"
KEY_FILE = "helper-key"
#: What init needs, as root, to become the workspace's user for good (CAP_SETPCAP: to empty the
#: bounding set on the way). It holds them for the few instructions before it drops them.
ROOT_START_CAPABILITIES = ["SETUID", "SETGID", "SETPCAP"]


@dataclass
class TcpChannel:
    """The settings of the TCP channel, and what the provider remembers of each workspace's address."""

    port: int
    secret: bytes = field(repr=False)  # the server's secret (auth/tokens.py server_secret)
    secrets_root: Path  # where the key files are made on the engine's host
    #: workspace id -> its address, or None for one without a TCP listener (no network, or made without).
    _addresses: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def key(self, workspace_id: str) -> bytes:
        return channel_key(self.secret, workspace_id)

    def init_arguments(self, workspace_id: str, user: str) -> list[str]:
        """The helper's init arguments that turn the TCP listener on, for a workspace made with `install_key`."""
        return ["-K", f"{SECRET_IN_WORKSPACE}/{KEY_FILE}", "-T", str(self.port), "-U", user]

    def install_key(self, workspace_id: str) -> Path:
        """Write the workspace's key file (root's alone); the directory to bind-mount at SECRET_IN_WORKSPACE."""
        directory = self.secrets_root / workspace_id
        self.secrets_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        path = directory / KEY_FILE
        partial = directory / f".{KEY_FILE}.{os.getpid()}.{threading.get_ident()}"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key_file_text(self.key(workspace_id)))
        os.chown(partial, 0, 0)
        partial.replace(path)
        return directory

    def remove_key(self, workspace_id: str) -> None:
        shutil.rmtree(self.secrets_root / workspace_id, ignore_errors=True)
        self.forget(workspace_id)

    def address(self, workspace_id: str, fresh: bool, inspect: Any) -> str | None:
        """The workspace's address for its helper's TCP listener, or None when it has none.

        `inspect()` gives the container as the Engine API inspects it (raising WorkspaceGone when it is
        gone); it is asked once and remembered, or again when `fresh` (an address that failed).
        """
        if not fresh:
            with self._lock:
                if workspace_id in self._addresses:
                    return self._addresses[workspace_id]
        listens, found = _address(inspect(), self.port)
        with self._lock:
            if found is not None or not listens:
                self._addresses[workspace_id] = found
            else:  # not running at this moment: look again next time
                self._addresses.pop(workspace_id, None)
        return found

    def forget(self, workspace_id: str) -> None:
        """The workspace was started, stopped or removed: its address may change."""
        with self._lock:
            self._addresses.pop(workspace_id, None)


def _address(container: dict[str, Any], port: int) -> tuple[bool, str | None]:
    """Whether the container's init listens on TCP `port`, and its IPv4 address on its network if it has one now."""
    command = container.get("Config", {}).get("Cmd") or []
    if "-T" not in command or command[command.index("-T") + 1 :][:1] != [str(port)]:
        return False, None  # made without the listener (no network, an older server, another port)
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    for network in networks.values():
        if network and network.get("IPAddress"):
            return True, str(network["IPAddress"])
    return True, None
