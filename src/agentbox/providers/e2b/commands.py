"""agentbox's helper in an E2B sandbox, reached through envd's commands (a `Transport` of the channel).

An E2B sandbox runs the same helper as a Docker workspace (a static Linux binary, uploaded
once per sandbox and helper build), so background processes and terminals behave alike on
every provider: one runtime, several deployments. What differs is the way in: each call is an
E2B command with a real PID, stdin through `send_stdin`/`close_stdin`, and a kill when the
caller leaves. The SDK decodes a command's output as UTF-8, so the helper writes its stdout as
lines of base64 (`AGENTBOX_TEXT`); it keeps its process table under /tmp (`AGENTBOX_PROCS`),
where the sandbox's user may write.
"""

from __future__ import annotations

import base64
import contextlib
import shlex
import time
from collections.abc import Iterable, Iterator
from typing import Any

import e2b
from e2b import CommandHandle, Sandbox

from agentbox.providers.e2b.errors import e2b_errors
from agentbox.sandbox import helper_bytes, helper_digest
from agentbox.sandbox.channel import Invocation

HELPER_DIR = "/tmp/.agentbox"
PROCS = f"{HELPER_DIR}/procs"


class CommandCall:
    """One helper call as an E2B command (a `Call` of the channel)."""

    def __init__(self, sandbox: Sandbox, handle: CommandHandle[Any]) -> None:
        self._sandbox = sandbox
        self._handle = handle
        self._ended = False

    def send(self, chunks: Iterable[bytes]) -> int:
        sent = 0
        with e2b_errors("sending input to the workspace's helper"):
            for chunk in chunks:
                if chunk:
                    self._sandbox.commands.send_stdin(self._handle.pid, chunk)
                    sent += len(chunk)
            self._sandbox.commands.close_stdin(self._handle.pid)
        return sent

    def frames(self) -> Iterator[tuple[int, bytes]]:
        pending = b""
        with e2b_errors("running the workspace's helper"):
            try:
                for stdout, stderr, _ in self._handle:
                    if stdout:
                        pending += stdout.encode()
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            if line:
                                yield 1, base64.b64decode(line)
                    if stderr:
                        yield 2, stderr.encode()
            except e2b.TimeoutException:
                raise TimeoutError("the helper's call passed its deadline") from None
        self._ended = True

    def exit_code(self) -> int:
        with e2b_errors("running the workspace's helper"):
            try:
                return self._handle.wait().exit_code
            except e2b.CommandExitException as exc:
                return exc.exit_code

    def close(self) -> None:
        if not self._ended:
            with contextlib.suppress(Exception):  # already gone, or E2B unreachable: nothing left to end
                self._handle.kill()


class CommandTransport:
    """The helper of one E2B sandbox; `install` puts it there first."""

    def __init__(self, sandbox: Sandbox, helper: str) -> None:
        self._sandbox = sandbox
        self.helper = helper

    def call(self, invocation: Invocation) -> CommandCall:
        timeout = max(0.001, invocation.deadline - time.monotonic()) if invocation.deadline is not None else 0
        with e2b_errors("starting the workspace's helper"):
            handle = self._sandbox.commands.run(
                shlex.join([self.helper, *invocation.argv]),
                background=True,
                envs={**(invocation.env or {}), "AGENTBOX_TEXT": "1", "AGENTBOX_PROCS": PROCS},
                cwd=invocation.cwd or None,
                stdin=invocation.stdin,
                timeout=timeout,
                retain_output=False,  # a follower's output passes through; it is never kept here
            )
        return CommandCall(self._sandbox, handle)


def install(sandbox: Sandbox) -> str:
    """The helper's path in `sandbox`, uploaded unless this build of it is there already."""
    path = f"{HELPER_DIR}/agentbox-exec-{helper_digest()}"
    with e2b_errors("installing agentbox's helper in the sandbox"):
        try:
            sandbox.commands.run(f"mkdir -p {PROCS} && test -x {path}", timeout=60)
        except e2b.CommandExitException:
            partial = f"{path}.partial"
            sandbox.files.write(partial, helper_bytes(), use_octet_stream=True)
            sandbox.commands.run(f"chmod 755 {partial} && mv -f {partial} {path}", timeout=60)
    return path
