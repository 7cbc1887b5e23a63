"""A second, throwaway Docker engine with a daemon.json of the test's choosing.

It lets the runtime fallback be tested for real (runsc unregistered, or registered but
broken) without touching the engine that the rest of the suite uses.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from .conftest import busybox_tar, end_process

ROOT = Path("/var/lib/agentbox-test-engine")
RUN = Path("/run/agentbox-test-engine")
# Its own network namespace: a second dockerd in the host's namespace would manage (and on
# some settings delete) the main engine's docker0 and iptables chains.
NETNS = "agentbox-test-engine"


class SecondEngine:
    """dockerd in its own network namespace, with its own data root, that a test may stop and restart."""

    def __init__(self, daemon_config: dict[str, Any]) -> None:
        self.config = RUN / "daemon.json"
        self.socket = RUN / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None
        RUN.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(daemon_config))
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "add", NETNS], capture_output=True, check=True)
        subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"], capture_output=True, check=True)

    def start(self) -> None:
        log = (RUN / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                # nsenter, not `ip netns exec`: that one also remounts /sys and hides the cgroups.
                "nsenter",
                f"--net=/run/netns/{NETNS}",
                "dockerd",
                "--config-file",
                str(self.config),
                "--data-root",
                str(ROOT),
                "--exec-root",
                str(RUN / "exec"),
                "--pidfile",
                str(RUN / "docker.pid"),
                "-H",
                self.host,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=self.host, timeout=60)
                client.ping()
                break
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("second dockerd did not start:\n" + (RUN / "dockerd.log").read_text()) from None
                time.sleep(0.2)
        client.api.import_image_from_data(busybox_tar(), repository="agentbox-test/busybox", tag="1")
        client.close()

    def reload(self, daemon_config: dict[str, Any]) -> None:
        """Rewrite daemon.json and SIGHUP the engine, as scripts/setup-host.sh does; wait until it took."""
        assert self.process is not None
        self.config.write_text(json.dumps(daemon_config))
        self.process.send_signal(signal.SIGHUP)
        want = set(daemon_config.get("runtimes", {}))
        client = docker.DockerClient(base_url=self.host, timeout=60)
        deadline = time.monotonic() + 30
        while not want <= set(client.info().get("Runtimes") or {}):
            assert time.monotonic() < deadline, "the second dockerd did not reload its runtimes"
            time.sleep(0.2)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
        self.process = None

    def wipe(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(RUN / "exec")], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        shutil.rmtree(ROOT, ignore_errors=True)
        shutil.rmtree(RUN, ignore_errors=True)


@contextmanager
def second_engine(daemon_config: dict[str, Any]) -> Iterator[SecondEngine]:
    """Start dockerd with `daemon_config`; yield it; stop it and wipe its state."""
    engine = SecondEngine(daemon_config)
    try:
        engine.start()
        yield engine
    finally:
        engine.wipe()
