"""Which OCI runtime workspaces of the `gvisor` provider get, decided once at start-up.

"runsc is registered" is not "runsc works": a platform may be refused (systrap by runsc
builds older than 2023) or hang (kvm in a nested VM) on a given host, so each candidate is
proven by starting a tiny probe container under a timeout. The candidates, in order: the
gVisor runtime (`runsc`, registered on the platform set-up measured as the better for the host:
platform_choice.py), its fallback (`runsc-ptrace`: the same binary on the ptrace platform, which
runs wherever runsc does), then runc with the spec's warning.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import tarfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from agentbox.providers.docker.platform_choice import RECORD_PATH, describe
from agentbox.sandbox import HELPER_IN_WORKSPACE, helper_bytes, helper_digest

log = logging.getLogger("agentbox.providers.docker.oci_runtime")

STANDARD_RUNTIME = "runc"
PROBE_LABEL = "agentbox.probe"
# runsc's default platform: systrap since the 2023 releases, ptrace before.
SYSTRAP_SINCE = "20230000"


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str
    gvisor: bool
    reason: str
    #: gVisor's platform (systrap, ptrace, kvm) and the runsc build; None under runc.
    platform: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class GVisorRuntime:
    """A runsc registration as the engine reports it (`docker info` -> Runtimes)."""

    name: str
    path: str
    args: tuple[str, ...]

    @cached_property
    def version(self) -> str | None:
        """The build, from `runsc --version` ("0.0~20240729.0"); None if it is not on this host."""
        return runsc_version(self.path)

    @property
    def platform(self) -> str:
        for arg in self.args:
            if arg.startswith("--platform="):
                return arg.removeprefix("--platform=")
        return "ptrace" if self.version and not knows_systrap(self.version) else "systrap"

    def describe(self) -> str:
        return f"{self.name} (runsc {self.version or 'of unknown version'}, platform {self.platform})"


def knows_systrap(version: str) -> bool:
    """Whether a runsc build ("0.0~20240729.0", "release-20240807.0") has the systrap platform."""
    build = re.sub(r"\D", "", version.split("~")[-1])[:8]
    return build >= SYSTRAP_SINCE


def runsc_version(path: str) -> str | None:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"runsc version (\S+)", result.stdout)
    return found.group(1) if found else None


def registered(client: docker.DockerClient) -> dict[str, dict[str, Any]]:
    return dict(client.info().get("Runtimes") or {})


def gvisor_runtime(name: str, entry: dict[str, Any]) -> GVisorRuntime:
    return GVisorRuntime(name, str(entry.get("path") or name), tuple(entry.get("runtimeArgs") or ()))


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


def platform_note(candidate: GVisorRuntime, kernel: str, record: Path = RECORD_PATH) -> str:
    """Why the gVisor runtime runs on its platform, from set-up's measurement (platform_choice.py)."""
    return f"Platform: {describe(candidate.platform, candidate.version, kernel, record)[1]}"


def choose_runtime(
    client: docker.DockerClient, gvisor: str, fallback: str | None, timeout: float, record: Path = RECORD_PATH
) -> RuntimeChoice:
    """The spec's rule: runsc when it is registered and works; its ptrace registration when only
    that works (with a warning: slower); else runc (with the spec's warning: no gVisor at all).
    The gVisor runtime's reason says why it runs on its platform (set-up's measurement in `record`).
    """
    runtimes = registered(client)
    if gvisor not in runtimes:
        return _without_gvisor(
            f"gVisor runtime ({gvisor}) not found: Docker knows only {', '.join(sorted(runtimes))}.",
            "to see how to install and register runsc",
        )
    failures: list[str] = []
    for name in [gvisor, *([fallback] if fallback and fallback in runtimes else [])]:
        candidate = gvisor_runtime(name, runtimes[name])
        started = time.monotonic()
        works, seen = probe(client, name, timeout)
        if not works:
            failures.append(f"{candidate.describe()}: {seen}")
            continue
        reason = (
            f"{candidate.describe()} is registered and a probe container ran under it in "
            f"{time.monotonic() - started:.2f} s (kernel {seen})"
        )
        if failures:
            reason = (
                f"gVisor runtime ({gvisor}) is registered but its probe failed: {failures[0]}. Falling back to "
                f"{reason}; this platform is slower: run `agentbox doctor` for the fix."
            )
            log.warning(reason)
        else:
            reason = f"{reason}. {platform_note(candidate, str(client.info().get('KernelVersion') or ''), record)}"
            log.info(reason)
        return RuntimeChoice(name, gvisor=True, reason=reason, platform=candidate.platform, version=candidate.version)
    return _without_gvisor(f"gVisor runtime ({gvisor}) is registered but its probe failed: {'; '.join(failures)}.")


def _without_gvisor(why: str, doctor: str = "for the fix") -> RuntimeChoice:
    """runc, with the spec's security warning."""
    reason = f"{why} Workspaces will run under {STANDARD_RUNTIME}, which shares the host kernel. " + (
        f"Run `agentbox doctor` {doctor}."
    )
    log.warning(reason)
    return RuntimeChoice(STANDARD_RUNTIME, gvisor=False, reason=reason)


def checkpoint_runtime(client: docker.DockerClient, choice: RuntimeChoice, wanted: str, primary: str) -> str | None:
    """`wanted` (the runtime for workspaces without network whose pause keeps memory) when the engine
    can use it: registered, with checkpoints on (experimental), and gVisor chosen on its primary
    registration (the same binary and platform). Else None, and pauses keep files only."""
    if not wanted or not choice.gvisor or choice.runtime != primary:
        return None
    info = client.info()
    if wanted not in (info.get("Runtimes") or {}):
        log.info(
            "no %s runtime registered: a pause keeps a workspace's files, not its memory "
            "(scripts/setup-host.sh registers it)",
            wanted,
        )
        return None
    if not info.get("ExperimentalBuild"):
        log.warning(
            'dockerd runs without "experimental": true, so it cannot checkpoint: a pause keeps a '
            "workspace's files, not its memory (scripts/setup-host.sh sets it; dockerd must restart)"
        )
        return None
    return wanted
