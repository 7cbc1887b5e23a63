"""Which OCI runtime workspaces of the `gvisor` provider get, decided once at start-up.

"runsc is registered" is not "runsc works": a platform may be refused or hang on a given
host, so the choice is proven by starting a tiny probe container under a timeout.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from agentbox.sandbox import HELPER_IN_WORKSPACE, helper_bytes, helper_digest

log = logging.getLogger("agentbox.runtime")

STANDARD_RUNTIME = "runc"
PROBE_LABEL = "agentbox.probe"


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str
    gvisor: bool
    reason: str


def probe_image(client: docker.DockerClient) -> str:
    """An image holding only the static helper, imported locally (no registry needed)."""
    name = f"agentbox/probe:{helper_digest()}"
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        payload = helper_bytes()
        info = tarfile.TarInfo(HELPER_IN_WORKSPACE.lstrip("/"))
        info.size, info.mode = len(payload), 0o755
        tar.addfile(info, io.BytesIO(payload))
    repository, tag = name.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return name


def probe(client: docker.DockerClient, runtime: str, timeout: float) -> tuple[bool, str]:
    """Start a container under `runtime`; (True, kernel release it saw) or (False, why not)."""
    image = probe_image(client)
    container = None
    try:
        container = client.containers.create(
            image,
            [HELPER_IN_WORKSPACE, "probe"],
            runtime=runtime,
            network_mode="none",
            labels={PROBE_LABEL: "1"},
        )
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return False, f"the probe container did not finish within {timeout:g} s (a hanging platform?)"
        output = container.logs().decode("utf-8", "replace").strip()
        if status.get("StatusCode") != 0:
            return False, f"the probe container exited with {status.get('StatusCode')}: {output[-500:]}"
        lines = output.splitlines()
        return True, lines[-1] if lines else "?"
    except docker.errors.APIError as exc:
        return False, f"the probe container could not start: {exc.explanation or exc}"
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                log.warning("could not remove probe container %s", container.id[:12])


def choose_runtime(client: docker.DockerClient, gvisor_runtime: str, timeout: float) -> RuntimeChoice:
    """The spec's rule: use runsc when it is registered and works, else runc with a warning."""
    registered = sorted((client.info().get("Runtimes") or {}).keys())
    if gvisor_runtime not in registered:
        reason = (
            f"gVisor runtime ({gvisor_runtime}) not found: Docker knows only {', '.join(registered)}. "
            f"Workspaces will run under {STANDARD_RUNTIME}, which shares the host kernel. "
            "Run `agentbox doctor` to see how to install and register runsc."
        )
        log.warning(reason)
        return RuntimeChoice(STANDARD_RUNTIME, gvisor=False, reason=reason)
    started = time.monotonic()
    works, seen = probe(client, gvisor_runtime, timeout)
    elapsed = time.monotonic() - started
    if not works:
        reason = (
            f"gVisor runtime ({gvisor_runtime}) is registered but its probe failed: {seen}. "
            f"Workspaces will run under {STANDARD_RUNTIME}, which shares the host kernel. "
            "Run `agentbox doctor` for the fix."
        )
        log.warning(reason)
        return RuntimeChoice(STANDARD_RUNTIME, gvisor=False, reason=reason)
    reason = f"{gvisor_runtime} is registered and a probe container ran under it in {elapsed:.2f} s (kernel {seen})"
    log.info(reason)
    return RuntimeChoice(gvisor_runtime, gvisor=True, reason=reason)
