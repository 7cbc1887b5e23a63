"""The ways into a Docker workspace's helper (`WaysIn`: TCP, the control socket, the Engine API's exec),
and the helper channel over TCP (WORKSPACE_HELPER_CHANNEL=tcp): its keys and addresses.

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

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from agentbox.providers.docker.engine import engine_errors
from agentbox.sandbox import CONTROL_SOCKET
from agentbox.sandbox.channel import Transport
from agentbox.sandbox.control import ControlSocketTransport, SocketFirst
from agentbox.sandbox.handshake import channel_key, key_file_text
from agentbox.sandbox.tcp import TcpTransport

#: Where the sandbox finds the key (a directory of its own, like a Kubernetes Secret volume).
SECRET_IN_WORKSPACE = "/.agentbox/secret"
KEY_FILE = "helper-key"
#: Beside the control socket: the id a restored init answers with (`WaysIn.leave_id`).
WORKSPACE_ID_FILE = "workspace-id"
#: What init needs, as root, to become the workspace's user for good (CAP_SETPCAP: to empty the
#: bounding set on the way). It holds them for the few instructions before it drops them.
ROOT_START_CAPABILITIES = ["SETUID", "SETGID", "SETPCAP"]
# The kernel's limit on a Unix socket's path (sun_path, with its NUL); a longer one is not used.
MAX_SOCKET_PATH = 107
# How long init may take to let go of its control socket before a checkpoint, or to listen again.
SOCKET_PATIENCE = 10.0


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


@dataclass
class WaysIn:
    """How the server reaches the helper of a Docker workspace, best first: over TCP at the container's
    address (`tcp`), through its Unix control socket under `control_root`, and the Engine API's exec
    behind either, for a workspace that has neither (no network, made without the listener, an init
    that does not listen yet). None for `tcp` or `control_root`: that way is not used."""

    client: docker.DockerClient
    user: str  # uid:gid of the workspace's user, who owns its control directory
    control_root: Path | None
    tcp: TcpChannel | None

    def transport(self, ref: str, workspace_id: str, fallback: Transport) -> Transport:
        """Into the container `ref`, falling back to `fallback` (the Engine API's exec)."""
        transport = fallback
        if self.control_root is not None:
            socket_path = self.socket(workspace_id)
            if len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH:
                transport = SocketFirst(ControlSocketTransport(socket_path, workspace_id), transport)
        if self.tcp is not None:
            channel = self.tcp

            def addresses(fresh: bool) -> str | None:
                return channel.address(workspace_id, fresh, lambda: self._inspect(ref))

            tcp = TcpTransport(workspace_id, channel.key(workspace_id), channel.port, addresses)
            transport = SocketFirst(tcp, transport)
        return transport

    def reserved_ports(self, ref: str, workspace_id: str) -> frozenset[int]:
        """The helper's TCP port, when the workspace's init listens on it."""
        if self.tcp is None:
            return frozenset()
        listens = self.tcp.address(workspace_id, False, lambda: self._inspect(ref)) is not None
        return frozenset({self.tcp.port} if listens else ())

    def control_dir(self, workspace_id: str) -> Path:
        """The workspace's control directory on the host, writable by the workspace user only."""
        assert self.control_root is not None
        directory = self.control_root / workspace_id
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        uid, _, gid = self.user.partition(":")
        os.chown(directory, int(uid), int(gid or uid))
        return directory

    def socket(self, workspace_id: str) -> Path:
        assert self.control_root is not None
        return self.control_root / workspace_id / CONTROL_SOCKET

    def leave_id(self, workspace_id: str) -> None:
        """Write the workspace's id beside its socket, before it is started from another's checkpoint: its init,
        restored with that other's id in memory, answers with this one once it listens again (init.c,
        `id_beside`). The directory is the workspace user's: a file made there never follows a link."""
        if self.control_root is None:
            return
        path = self.control_root / workspace_id / WORKSPACE_ID_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(workspace_id + "\n")

    def signal_init(self, ref: str, signal: str) -> None:
        """Send the workspace's init `signal` (checkpoints.py: let go of the socket, listen again)."""
        if self.control_root is not None:
            with engine_errors("signalling the workspace's init"):
                self.client.api.kill(ref, signal=signal)

    def await_socket(self, workspace_id: str, present: bool) -> bool:
        """Whether init made (or removed) its control socket within SOCKET_PATIENCE."""
        if self.control_root is None:
            return True
        path = self.socket(workspace_id)
        deadline = time.monotonic() + SOCKET_PATIENCE
        while path.exists() != present:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def forget(self, workspace_id: str) -> None:
        """The workspace was started or stopped: its address may change."""
        if self.tcp is not None:
            self.tcp.forget(workspace_id)

    def remove(self, workspace_id: str) -> None:
        """The workspace was removed: its control directory and its key go."""
        if self.control_root is not None:
            shutil.rmtree(self.control_root / workspace_id, ignore_errors=True)
        if self.tcp is not None:
            self.tcp.remove_key(workspace_id)

    def _inspect(self, ref: str) -> dict[str, Any]:
        with engine_errors("inspecting the workspace"):
            found: dict[str, Any] = self.client.api.inspect_container(ref)
        return found
