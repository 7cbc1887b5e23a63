"""A second, throwaway Docker engine with a daemon.json of the test's choosing.

It lets the runtime fallback be tested for real (runsc unregistered, or registered but
broken) without touching the engine that the rest of the suite uses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from .conftest import busybox_tar

ROOT = Path("/var/lib/agentbox-test-engine")
RUN = Path("/run/agentbox-test-engine")
# Its own network namespace: a second dockerd in the host's namespace would manage (and on
# some settings delete) the main engine's docker0 and iptables chains.
NETNS = "agentbox-test-engine"


@contextmanager
def second_engine(daemon_config: dict[str, Any]) -> Iterator[str]:
    """Start dockerd with `daemon_config`; yield its DOCKER_HOST; stop it and wipe its state."""
    RUN.mkdir(parents=True, exist_ok=True)
    config = RUN / "daemon.json"
    config.write_text(json.dumps(daemon_config))
    socket = RUN / "docker.sock"
    host = f"unix://{socket}"
    log = (RUN / "dockerd.log").open("wb")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], capture_output=True, check=True)
    subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"], capture_output=True, check=True)
    process = subprocess.Popen(
        [
            # nsenter, not `ip netns exec`: that one also remounts /sys and hides the cgroups.
            "nsenter",
            f"--net=/run/netns/{NETNS}",
            "dockerd",
            "--config-file",
            str(config),
            "--data-root",
            str(ROOT),
            "--exec-root",
            str(RUN / "exec"),
            "--pidfile",
            str(RUN / "docker.pid"),
            "-H",
            host,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=host, timeout=60)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("second dockerd did not start:\n" + (RUN / "dockerd.log").read_text()) from None
                time.sleep(0.2)
        client.api.import_image_from_data(busybox_tar(), repository="agentbox-test/busybox", tag="1")
        client.close()
        yield host
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        subprocess.run(["umount", "-R", str(RUN / "exec")], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        shutil.rmtree(ROOT, ignore_errors=True)
        shutil.rmtree(RUN, ignore_errors=True)
