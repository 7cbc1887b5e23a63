"""The Docker Engine API as agentbox uses it: its errors mapped to agentbox's, and exec as the
transport of the helper's channel (agentbox.sandbox.channel) into a container."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions

from agentbox.errors import AgentboxError, BadRequest, ProviderError, ProviderUnavailable, WorkspaceGone
from agentbox.sandbox import HELPER_IN_WORKSPACE
from agentbox.sandbox.channel import Invocation
from agentbox.sandbox.control import SocketStream

#: The engine's own message when it cannot start the helper is a line or two.
FAILURE_BYTES = 4096


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Turn the Docker SDK's exceptions into provider errors that say what to do."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise WorkspaceGone(f"{what}: the container no longer exists ({exc.explanation})") from None
    except docker.errors.APIError as exc:
        raise ProviderError(f"{what}: the Docker engine said: {exc.explanation or exc}") from None
    except requests.exceptions.Timeout:
        raise ProviderUnavailable(
            f"{what}: the Docker engine did not answer in time; it may be overloaded or restarting, try again"
        ) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ProviderUnavailable(
            f"{what}: the Docker engine cannot be reached ({exc}); is dockerd running? (`make run` starts it)"
        ) from None


class Frames(SocketStream):
    """A hijacked Engine API connection: Docker's multiplexed stdout/stderr frames, and stdin."""

    def __init__(self, response_socket: Any, deadline: float | None = None) -> None:
        super().__init__(getattr(response_socket, "_sock", response_socket), deadline)
        self._keepalive = response_socket

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(1 for stdout | 2 for stderr, data) until the command closes its output.

        Raises TimeoutError if the host-side deadline passes first.
        """
        while True:
            header = self._recv_exactly(8)
            if header is None:
                return
            stream, size = struct.unpack(">BxxxL", header)
            # The engine frames what the helper writes, as it writes it; a frame is still handed on
            # in pieces, so what a call holds never depends on what was written at once.
            for piece in self._pieces(size):
                yield stream, piece

    def close(self) -> None:
        super().close()
        self._keepalive.close()


class EngineCall(Frames):
    """One exec of the helper in a container (a `Call` of the channel)."""

    def __init__(self, api: docker.APIClient, exec_id: str, deadline: float | None) -> None:
        with engine_errors("exec"):
            super().__init__(api.exec_start(exec_id, socket=True), deadline)
        self._api = api
        self.id = exec_id
        self._first = True

    def frames(self) -> Iterator[tuple[int, bytes]]:
        for stream, data in super().frames():
            if self._first and data.startswith(b"OCI runtime exec failed"):
                # The engine could not start the helper at all; it says why in-band, in a line or two
                # (or a command printed this itself: a bounded look, then the call fails either way).
                raise _engine_exec_failure(data[:FAILURE_BYTES] + _head(super().frames(), FAILURE_BYTES))
            self._first = False
            yield stream, data

    def exit_code(self) -> int:
        # The engine may record the exit code a moment after the output closes.
        for _ in range(200):
            with engine_errors("exec"):
                details = self._api.exec_inspect(self.id)
            if not details.get("Running") and details.get("ExitCode") is not None:
                return int(details["ExitCode"])
            time.sleep(0.005)
        raise ProviderError(
            "the command ended without an exit status: the workspace's sandbox stopped under it "
            "(it restarts by itself if it crashed); run the command again"
        )


class EngineTransport:
    """The helper in container `ref`, run as `user` through the Engine API's exec."""

    def __init__(self, client: docker.DockerClient, ref: str, user: str) -> None:
        self._api = client.api
        self.ref = ref
        self.user = user

    def call(self, invocation: Invocation) -> EngineCall:
        with engine_errors("exec"):
            exec_id = self._api.exec_create(
                self.ref,
                [HELPER_IN_WORKSPACE, *invocation.argv],
                stdin=invocation.stdin,
                user=self.user,
                workdir=invocation.cwd,
                environment=[f"{k}={v}" for k, v in (invocation.env or {}).items()],
            )["Id"]
        return EngineCall(self._api, exec_id, invocation.deadline)


def _head(frames: Iterator[tuple[int, bytes]], limit: int) -> bytes:
    """At most `limit` bytes of what is left of `frames`."""
    head = bytearray()
    for _, data in frames:
        head += data[: limit - len(head)]
        if len(head) >= limit:
            break
    return bytes(head)


def _engine_exec_failure(message: bytes) -> AgentboxError:
    text = message.decode("utf-8", "replace").strip()
    if "working directory" in text or "chdir" in text:
        return BadRequest(f"the working directory does not exist in the workspace: create it first ({text})")
    if "control server" in text:
        return ProviderError(
            f"the workspace's sandbox cannot be reached by this host's runsc ({text}): it was started by another "
            "runsc build (an upgrade in place). Stop and start the workspace, or restart the server, which does so "
            "for every such workspace; its files are kept"
        )
    return BadRequest(f"the command could not be started: {text}")
