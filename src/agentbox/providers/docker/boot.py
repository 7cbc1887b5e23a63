"""How the Docker provider knows a sandbox it started is up: init's ready line after a create, a probe
after a start that goes on while the sandbox boots."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import docker

from agentbox.errors import ProviderError, WorkspaceGone
from agentbox.providers.docker.engine import Frames, engine_errors

READY_LINE = b"agentbox-exec ready"  # what init prints first (init.c)
# How long init may take to say it is ready, once the engine was asked to start the container.
READY_PATIENCE = 60
# How long a workspace just started may take to be running for good (see probe_booted).
BOOT_PATIENCE = 60.0
BOOT_RETRY_SECONDS = 0.25
# The engine's answer to an exec into a container that is not running (moby's errNotRunning and
# errContainerIsRestarting).
NOT_RUNNING = ("is not running", "is restarting")


def start_and_await_ready(client: docker.DockerClient, ref: str) -> None:
    """Start a created container; return once its init has run in the sandbox and said so.

    Ready means code has run in the sandbox, not merely that the engine started it; init's
    own line proves that without the extra round trip of a probe exec (~100 ms under runsc).
    Raises ProviderError when init does not say so within READY_PATIENCE or the engine refuses the start,
    WorkspaceGone when the container is gone, ProviderUnavailable when the engine does not answer.
    """
    with engine_errors("starting the container"):
        params = {"stdout": 1, "stderr": 1, "stream": 1}
        attached = Frames(client.api.attach_socket(ref, params=params), time.monotonic() + READY_PATIENCE)
    output = b""
    try:
        with engine_errors("starting the container"):
            client.api.start(ref)
        for _, data in attached.frames():
            output += data
            if READY_LINE in output:
                return
    except TimeoutError:
        pass
    finally:
        attached.close()
    raise ProviderError(
        f"the workspace started but its init never reported ready within {READY_PATIENCE} s ({output[-300:]!r}): "
        "the engine may be overloaded; try again, and run `agentbox doctor` if it keeps failing"
    )


def probe_booted(
    probe: Callable[[], None],
    state: Callable[[], Mapping[str, Any]],
    patience: float = BOOT_PATIENCE,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Probe a workspace the engine has just started (`probe`), while its sandbox boots.

    `docker start` returns once the engine has started the sandbox, not once it stays up: on a loaded
    engine a gVisor sandbox may end as it boots, and the engine then answers an exec with "is not running"
    until the restart policy brings it back. So a probe that fails while the container (`state`: inspect's
    State) is not running, or that the engine refused as not running, is tried again for `patience`
    seconds; one that fails while it runs is raised at once. Raises ProviderError past `patience`, saying
    how the sandbox last ended; WorkspaceGone when the container is gone.
    """
    give_up = clock() + patience
    while True:
        try:
            probe()
            return
        except WorkspaceGone:
            raise
        except ProviderError as exc:
            failure = exc
        now = state()
        running = bool(now.get("Running")) and not now.get("Restarting")
        if running and not any(words in failure.detail for words in NOT_RUNNING):
            raise failure
        if clock() >= give_up:
            ended = f"exit code {now.get('ExitCode')}" + (f", {now['Error']}" if now.get("Error") else "")
            raise ProviderError(
                f"the workspace was started but its sandbox did not stay running for {patience:g} s (it last "
                f"ended with {ended}; {failure.detail}): the engine may be overloaded; start it again, and run "
                "`agentbox doctor` if it keeps failing"
            )
        sleep(BOOT_RETRY_SECONDS)
