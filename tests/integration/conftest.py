"""Integration fixtures: a real dockerd (started by `make test`), real agentbox servers as subprocesses."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import docker.errors
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentbox.client import APIError, Client
from agentbox.config import load_settings

T = TypeVar("T")
WORKSPACE_LABEL = "agentbox.workspace.id"
BUSYBOX_IMAGE = "agentbox-test/busybox:1"
KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef00",
    "fuzzer": "fuzzer-key-0123456789abcdef",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end_process(process: subprocess.Popen[bytes], kill: bool = False) -> None:
    """SIGKILL, or SIGTERM with 30 s to go before SIGKILL."""
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Server:
    """`agentbox serve` in a subprocess, as a user would run it."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.env = {
            **os.environ,
            "ENABLE_AGENT_WORKSPACES": "true",
            "WORKSPACE_DATA_DIR": str(data_dir),
            "WORKSPACE_API_KEYS": ",".join(f"{owner}:{key}" for owner, key in KEYS.items()),
            "WORKSPACE_DEFAULT_MEMORY": "512M",
            "WORKSPACE_DEFAULT_CPU": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentbox.cli", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is not None:
            end_process(self.process, kill)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, owner: str = "alice") -> Client:
        return Client(self.url, KEYS[owner])

    def health(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.url}/api/v1/health", timeout=10).json())

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {"name{label=value}": value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return found

    @property
    def instance(self) -> str:
        """The label value that marks this server's containers on the engine."""
        return load_settings(WORKSPACE_DATA_DIR=str(self.data_dir)).instance_id

    def containers(self, client: docker.DockerClient) -> dict[str, str]:
        """This server's workspace containers on the engine: workspace id -> state."""
        found = client.api.containers(all=True, filters={"label": f"agentbox.instance={self.instance}"})
        return {c["Labels"][WORKSPACE_LABEL]: c["State"] for c in found}

    def disks(self) -> set[str]:
        """Workspace disks mounted from this server's data directory."""
        prefix = str(self.data_dir / "disks") + "/"
        return {mount.removeprefix(prefix) for mount in workspace_disk_mounts() if mount.startswith(prefix)}


def reads_back(client: Client, workspace_id: str, path: str, content: str) -> bool:
    """Whether the workspace answers and `path` in it holds `content` (False while it cannot answer)."""
    try:
        return client.exec(workspace_id, f"cat {path}")["stdout"] == content
    except APIError:
        return False


def eventually(check: Callable[[], T], timeout: float = 60, interval: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail with its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"still {answer!r} after {timeout} s"
        time.sleep(interval)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # any failure here means the engine is not there
        pytest.fail(f"no Docker engine ({exc}): run the suite with `make test`, which starts dockerd")
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def no_leftover_workspaces(docker_client: docker.DockerClient) -> Iterator[None]:
    """After the whole suite, nothing labelled as a workspace may remain on the engine."""
    mounted_before = set(workspace_disk_mounts())
    yield
    left = docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})
    for container in left:
        container.remove(force=True, v=True)
    disks = set(workspace_disk_mounts()) - mounted_before
    for mount in disks:
        subprocess.run(["umount", "--lazy", mount], check=False)
    assert not left, f"workspace containers left behind: {[c.name for c in left]}"
    assert not disks, f"workspace disks left mounted: {sorted(disks)}"


def container_id(client: docker.DockerClient, workspace_id: str) -> str:
    return str(client.containers.get(f"agentbox-{workspace_id}").id)


def workspace_disk_mounts() -> list[str]:
    """Workspace disks still mounted on the host (each workspace's data directory has disks/ws-*)."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    return [line.split()[1] for line in mounts if "/disks/ws-" in line.split()[1]]


def busybox_tar() -> bytes:
    busybox = shutil.which("busybox")
    assert busybox, "busybox is missing: scripts/setup-host.sh installs busybox-static"
    listing = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in listing:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for directory in ("tmp", "workspace"):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(entry)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """A tiny image that is not the default, built without a registry."""
    try:
        docker_client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = BUSYBOX_IMAGE.split(":")
        docker_client.api.import_image_from_data(busybox_tar(), repository=repository, tag=tag)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("server")).start()
    yield running
    running.stop()


@pytest.fixture
def alice(server: Server) -> Iterator[Client]:
    with server.client("alice") as client:
        yield client


@pytest.fixture
def bob(server: Server) -> Iterator[Client]:
    with server.client("bob") as client:
        yield client


@pytest.fixture
def workspace(alice: Client) -> Iterator[dict[str, object]]:
    created = alice.create()
    yield created
    with contextlib.suppress(APIError):  # the test may have deleted it already
        alice.delete(str(created["id"]))
