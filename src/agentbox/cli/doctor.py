"""`agentbox doctor`: the spec's troubleshooting steps, run for real, each with its fix."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from agentbox.config import Settings
from agentbox.providers.docker.disks import Disks
from agentbox.providers.docker.oci_runtime import (
    GVisorRuntime,
    gvisor_runtime,
    knows_systrap,
    probe,
    registered,
    runsc_version,
)
from agentbox.providers.docker.platform_choice import MEASURE_HINT, RECORD_PATH, describe

DAEMON_JSON = Path("/etc/docker/daemon.json")
# gVisor's netstack fails on this kernel with Debian's builds (see docs/runtime.md).
RECOMMENDED_ARGS = ["--platform=systrap", "--network=host", "--host-uds=create"]
RECOMMENDED_VERSION = "0.0~20240729.0"  # the first Debian build with systrap (bookworm-backports)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings, daemon_json: Path = DAEMON_JSON, record: Path = RECORD_PATH) -> Iterator[Check]:
    runtime = settings.gvisor_runtime
    binary = shutil.which(runtime)
    version = runsc_version(binary) if binary else None
    yield Check(
        f"{runtime} installed",
        binary is not None,
        f"{binary}, version {version}" if binary else "not on PATH",
        "scripts/setup-host.sh installs it (runsc from bookworm-backports), or see docs/runtime.md",
    )
    if version is not None:
        yield Check(
            f"{runtime} has the systrap platform",
            knows_systrap(version),
            f"version {version}",
            f"{runtime} {version} has only ptrace (2-10x slower for real work): install {RECOMMENDED_VERSION} "
            "or newer (scripts/setup-host.sh takes it from bookworm-backports)",
        )

    registration = _registered_in(daemon_json, runtime)
    snippet = json.dumps({"runtimes": {runtime: {"path": binary or "/usr/bin/runsc", "runtimeArgs": RECOMMENDED_ARGS}}})
    yield Check(
        f"{runtime} registered in {daemon_json}",
        registration is not None,
        json.dumps(registration) if registration is not None else "no such runtime entry",
        f"run scripts/setup-host.sh, or merge {snippet} into {daemon_json}, then kill -HUP $(cat /var/run/docker.pid)",
    )

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        yield Check(
            "Docker engine reachable",
            False,
            str(exc),
            "start dockerd (setsid dockerd >/var/log/dockerd.log 2>&1 &) or set DOCKER_HOST",
        )
        return
    yield Check("Docker engine reachable", True, f"Docker {client.version().get('Version')}")

    known = registered(client)
    yield Check(
        f"{runtime} known to the engine (docker info)",
        runtime in known,
        ", ".join(sorted(known)),
        f"reload the engine's configuration: kill -HUP $(cat /var/run/docker.pid); check {daemon_json}",
    )
    for name in [runtime, settings.gvisor_fallback_runtime]:
        if name in known:
            candidate = gvisor_runtime(name, known[name])
            works, seen = probe(client, name, settings.probe_timeout)
            yield Check(
                f"a probe container runs under {candidate.describe()}",
                works,
                seen,
                f"set runtimeArgs to {RECOMMENDED_ARGS} in {daemon_json} (runsc {RECOMMENDED_VERSION} or newer; "
                "older builds know only ptrace, kvm hangs in nested VMs), then reload the engine",
            )
    if runtime in known:
        kernel = str(client.info().get("KernelVersion") or "")
        yield platform_check(gvisor_runtime(runtime, known[runtime]), kernel, record)

    checkpointing = settings.gvisor_checkpoint_runtime
    if checkpointing:
        experimental = bool(client.info().get("ExperimentalBuild"))
        yield Check(
            "pauses keep memory (gVisor checkpoints of workspaces without network)",
            checkpointing in known and experimental,
            f"{checkpointing} {'registered' if checkpointing in known else 'not registered'}, dockerd "
            f'{"with" if experimental else "without"} "experimental": true',
            'run scripts/setup-host.sh (it registers the runtime and sets "experimental"), then restart dockerd '
            "when no workspace runs; or set WORKSPACE_GVISOR_CHECKPOINT_RUNTIME= to pause with files only",
        )

    try:
        client.images.get(settings.image)
        yield Check(f"workspace image {settings.image}", True, "present")
    except docker.errors.ImageNotFound:
        yield Check(
            f"workspace image {settings.image}",
            False,
            "missing",
            "make image (builds it with debootstrap), or set WORKSPACE_IMAGE to an image you have",
        )
    client.close()

    disks = Disks(settings.data_dir / "disks", settings.user)
    yield Check(
        "workspace disk limits",
        disks.enforced,
        "enforced: each workspace gets its own ext4 filesystem of its disk size" if disks.enforced else disks.why_not,
        "run agentbox as root with e2fsprogs and util-linux installed (apt-get install -y e2fsprogs mount)",
    )

    yield _network_check(settings)


def platform_check(runtime: GVisorRuntime, kernel: str, record: Path = RECORD_PATH) -> Check:
    """Whether `runtime` runs on the platform set-up measured as the better here, with the figures."""
    ok, detail = describe(runtime.platform, runtime.version, kernel, record)
    return Check(
        f"{runtime.name}'s platform ({runtime.platform}) chosen for this host",
        ok,
        detail,
        f"{MEASURE_HINT} (delete {record} to measure again); AGENTBOX_RUNSC_ARGS=... chooses yourself",
    )


def _network_check(settings: Settings) -> Check:
    name, fix = "workspace network isolation", "set WORKSPACE_NETWORK_NAME=workspace_net"
    if not settings.network_name:
        return Check(name, False, "WORKSPACE_NETWORK_NAME is empty: workspaces share Docker's default bridge", fix)
    if os.geteuid() != 0 or shutil.which("iptables-restore") is None:
        return Check(name, False, "its firewall needs root and iptables", "run as root; apt-get install -y iptables")
    return Check(name, True, f"{settings.network_name}, behind agentbox's firewall (docs/security.md)")


def _registered_in(daemon_json: Path, runtime: str) -> dict[str, object] | None:
    try:
        config = json.loads(daemon_json.read_text())
    except (OSError, ValueError):
        return None
    entry = (config.get("runtimes") or {}).get(runtime)
    return entry if isinstance(entry, dict) else None
