"""Integration fixtures: a real dockerd (started by `make test`), real agentbox servers as subprocesses."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import docker
import docker.errors
import httpx
import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection

from agentbox.client import APIError, Client
from agentbox.config import load_settings
from agentbox.providers.docker import network as docker_network
from agentbox.providers.docker.freezer import container_freezer
from agentbox.providers.docker.platform_choice import busybox_tar
from agentbox.wire.system import Health
from agentbox.wire.workspaces import WorkspaceOut

if TYPE_CHECKING:
    from tests.egress_lab import World

    from .e2b_standin import E2BStandIn

T = TypeVar("T")
# The fenced server's network, and the stand-in world outside it (see `world`).
NETWORK = "agentbox-test-net"
PREVIEW_DOMAIN = "preview.localhost"
WORLD = "agentbox-test-world"
PUBLIC, OTHER_PUBLIC, PRIVATE = "198.51.100.2", "198.51.100.3", "10.213.0.2"
# How a connection the firewall refuses fails: at once, never by timing out.
REJECTED = {"EHOSTUNREACH", "ECONNREFUSED", "ENETUNREACH", "EADDRNOTAVAIL"}
WORKSPACE_LABEL = "agentbox.workspace.id"
# What each attack of the hostile-workload suite achieved: (attack, provider, outcome).
HOSTILE_REPORT = pytest.StashKey[list[tuple[str, str, str]]]()
BUSYBOX_IMAGE = "agentbox-test/busybox:1"
KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef00",
    "fuzzer": "fuzzer-key-0123456789abcdef",
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(HOSTILE_REPORT, [])
    if rows:
        terminalreporter.section("hostile workloads: what each attack achieved")
        for attack, provider, outcome in rows:
            terminalreporter.write_line(f"{attack:<26} {provider:<7} {outcome}")


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

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, log_name: str = "server.log") -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / log_name
        self.env = {
            **os.environ,
            "ENABLE_AGENT_WORKSPACES": "true",
            "WORKSPACE_DATA_DIR": str(data_dir),
            "WORKSPACE_API_KEYS": ",".join(f"{owner}:{key}" for owner, key in KEYS.items()),
            "WORKSPACE_DEFAULT_MEMORY": "512M",
            "WORKSPACE_DEFAULT_CPU": "1",
            # The whole suite calls from 127.0.0.1, many times without a key or with a wrong one on
            # purpose: the rate limits are tested on servers of their own (test_api_keys.py).
            "WORKSPACE_RATE_LIMIT_FAILURES": "1000000/minute",
            "WORKSPACE_RATE_LIMIT_ANONYMOUS": "1000000/minute",
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

    def health(self, owner: str | None = None) -> Health:
        """GET /health, without a key unless `owner`'s (the replicas' fields come only with one)."""
        headers = {"Authorization": f"Bearer {KEYS[owner]}"} if owner else {}
        return Health.model_validate(httpx.get(f"{self.url}/api/v1/health", headers=headers, timeout=10).json())

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {"name{label=value}": value}."""
        text = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=10).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return found

    @property
    def instance(self) -> str:
        """The label value that marks this server's containers on the engine (from its database's URL)."""
        database = self.env.get("WORKSPACE_DATABASE_URL", "")
        return load_settings(WORKSPACE_DATA_DIR=str(self.data_dir), WORKSPACE_DATABASE_URL=database).instance_id

    def containers(self, client: docker.DockerClient) -> dict[str, str]:
        """This server's workspace containers on the engine: workspace id -> state."""
        found = client.api.containers(all=True, filters={"label": f"agentbox.instance={self.instance}"})
        return {c["Labels"][WORKSPACE_LABEL]: c["State"] for c in found}

    def disks(self) -> set[str]:
        """Workspace disks mounted from this server's data directory."""
        prefix = str(self.data_dir / "disks") + "/"
        return {mount.removeprefix(prefix) for mount in workspace_disk_mounts() if mount.startswith(prefix)}


def answers(url: str) -> bool:
    """Whether an HTTP server answers 200 at `url`."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def reads_back(client: Client, workspace_id: str, path: str, content: str) -> bool:
    """Whether the workspace answers and `path` in it holds `content` (False while it cannot answer)."""
    try:
        return client.exec(workspace_id, f"cat {path}").stdout == content
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


def read_until(connection: ClientConnection, wanted: bytes, timeout: float = 30) -> bytes:
    """What a terminal's WebSocket sends until `wanted` has come (binary frames only), within `timeout` s."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        message = connection.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(message, bytes), message
        seen += message
    return seen


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
    if os.environ.get("AGENTBOX_TESTS_SHARE_ENGINE"):
        return  # another pytest run uses the engine at the same time (a developer's parallel runs)
    left = docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})
    for container in left:
        if (frozen := container_freezer(str(container.id))) is not None:
            frozen.thaw()  # a suspended sandbox would hold the engine's kill, and the removal with it
        container.remove(force=True, v=True)
    disks = set(workspace_disk_mounts()) - mounted_before
    for mount in disks:
        subprocess.run(["umount", "--lazy", mount], check=False)
    assert not left, f"workspace containers left behind: {[c.name for c in left]}"
    assert not disks, f"workspace disks left mounted: {sorted(disks)}"


def container_id(client: docker.DockerClient, workspace_id: str) -> str:
    return str(client.containers.get(f"agentbox-{workspace_id}").id)


def workspace_disk_mounts() -> list[str]:
    """Workspace disks and volumes still mounted on the host (each server's data directory has disks/ws-* and
    volumes/vol-*: a volume is mounted until it is deleted, so a test deletes the volumes it made)."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    return [line.split()[1] for line in mounts if "/disks/ws-" in line.split()[1] or "/volumes/vol-" in line.split()[1]]


@contextlib.contextmanager
def made(client: Client, **options: object) -> Iterator[WorkspaceOut]:
    """A gVisor workspace of `client` with `options`, deleted afterwards."""
    workspace = client.create(provider="gvisor", **options)  # type: ignore[arg-type]
    try:
        yield workspace
    finally:
        with contextlib.suppress(APIError):
            client.delete(workspace.id)


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
def e2b(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[E2BStandIn]:
    """The local stand-in for E2B's cloud (API and in-sandbox daemon), backed by real workspaces."""
    from .e2b_standin import E2BStandIn  # it imports this module

    standin = E2BStandIn(tmp_path_factory.mktemp("e2b")).start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, e2b: E2BStandIn) -> Iterator[Server]:
    # With GitHub Apps configured, so that their endpoints are exercised too (no App is registered),
    # and E2B through the official SDK, pointed at the stand-in by the SDK's own variables.
    # Usage sampled every 2 s, so that the dashboard's charts have points within a test.
    env = {"GITHUB_APP_ENCRYPTION_KEY": "ab" * 32, "E2B_API_KEY": e2b.api_key, "WORKSPACE_USAGE_INTERVAL": "2"}
    env |= {"E2B_API_URL": e2b.url, "E2B_SANDBOX_URL": e2b.url, "E2B_CONNECTION_RETRIES": "0"}
    running = Server(tmp_path_factory.mktemp("server"), env=env)
    # Host-form previews on *.preview.localhost, reached in tests by the Host header alone.
    running.env["WORKSPACE_PREVIEW_DOMAIN"] = f"{PREVIEW_DOMAIN}:{running.port}"
    running.start()
    yield running
    running.stop()


@pytest.fixture
def sdk(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """E2B's SDKs' own variables, pointing at agentbox's E2B endpoint (nothing of E2B's cloud)."""
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b/envd")
    monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
    monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
    yield server.url


@pytest.fixture
def reaping(tmp_path: Path) -> Iterator[Server]:
    """A server of its own that looks for expired workspaces every second."""
    server = Server(tmp_path, env={"WORKSPACE_REAP_INTERVAL": "1"}).start()
    yield server
    server.stop()


@pytest.fixture
def alice(server: Server) -> Iterator[Client]:
    with server.client("alice") as client:
        yield client


@pytest.fixture
def bob(server: Server) -> Iterator[Client]:
    with server.client("bob") as client:
        yield client


@pytest.fixture(params=["gvisor", "docker", "e2b"])
def workspace(request: pytest.FixtureRequest, alice: Client) -> Iterator[WorkspaceOut]:
    """A running workspace of each provider: tests that take it hold for every provider."""
    created = alice.create(provider=request.param)
    yield created
    with contextlib.suppress(APIError):  # the test may have deleted it already
        alice.delete(created.id)


@pytest.fixture(params=["gvisor", "docker"])
def docker_workspace(request: pytest.FixtureRequest, alice: Client) -> Iterator[WorkspaceOut]:
    """A running workspace of each Docker provider (what runs agentbox's own helper)."""
    created = alice.create(provider=request.param)
    yield created
    with contextlib.suppress(APIError):  # the test may have deleted it already
        alice.delete(created.id)


# Run inside a workspace: try each host:port, report "connected", "timeout" or the errno's name.
PROBE = """
import errno, json, socket, sys
found = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.settimeout(5)
    try:
        sock.connect((host, int(port)))
        found[target] = "connected"
    except socket.timeout:
        found[target] = "timeout"
    except OSError as exc:
        found[target] = errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()
print(json.dumps(found))
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def remove_network(client: docker.DockerClient, name: str = NETWORK) -> None:
    """The network and agentbox's chains for it (which the service leaves for its workspaces)."""
    docker_network.remove_network(client, name)


@contextlib.contextmanager
def egress_server(path: Path, client: docker.DockerClient, network: str, world: World, **env: str) -> Iterator[Server]:
    """A server on fenced network `network` of its own (removed after, with its chains), whose egress proxy and
    resolver take `world` (tests/egress_lab.py) for the internet: its names from the world's DNS, its
    certificates from the world's CA."""
    remove_network(client, network)
    lab = {
        "WORKSPACE_NETWORK_NAME": network,
        "WORKSPACE_EGRESS_UPSTREAM_DNS": world.dns,
        "WORKSPACE_EGRESS_UPSTREAM_CA": str(world.upstream_ca),
    }
    server = Server(path, env={**lab, **env}).start()
    try:
        yield server
    finally:
        server.stop()
        remove_network(client, network)


@pytest.fixture(scope="module")
def world() -> Iterator[None]:
    """The stand-in internet and private service, in their own network namespace."""
    subprocess.run(["ip", "netns", "del", WORLD], capture_output=True)
    subprocess.run(["ip", "link", "del", "abx-world0"], capture_output=True)
    sh("ip", "netns", "add", WORLD)
    sh("ip", "link", "add", "abx-world0", "type", "veth", "peer", "name", "abx-world1")
    sh("ip", "link", "set", "abx-world1", "netns", WORLD)
    sh("ip", "addr", "add", "10.213.0.1/30", "dev", "abx-world0")
    sh("ip", "link", "set", "abx-world0", "up")
    inside = ["ip", "netns", "exec", WORLD]
    sh(*inside, "ip", "link", "set", "lo", "up")
    sh(*inside, "ip", "addr", "add", f"{PRIVATE}/30", "dev", "abx-world1")
    for address in (PUBLIC, OTHER_PUBLIC):
        sh(*inside, "ip", "addr", "add", f"{address}/32", "dev", "abx-world1")
    sh(*inside, "ip", "link", "set", "abx-world1", "up")
    sh(*inside, "ip", "route", "add", "default", "via", "10.213.0.1")
    # Through a gateway, as the internet is (a directly connected subnet is the host's own network).
    sh("ip", "route", "add", "198.51.100.0/24", "via", PRIVATE)
    web = subprocess.Popen(
        [*inside, sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually(lambda: answers(f"http://{PUBLIC}:8080/"), timeout=20)
        yield
    finally:
        web.kill()
        web.wait()
        subprocess.run(["ip", "route", "del", "198.51.100.0/24"], capture_output=True)
        subprocess.run(["ip", "link", "del", "abx-world0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", WORLD], capture_output=True)


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    """A service on the host, listening on every address (as a careless database would)."""
    server = socket.create_server(("0.0.0.0", 0))
    port = server.getsockname()[1]

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                server.accept()[0].close()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    server.close()


@pytest.fixture(scope="module")
def fenced(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, world: None
) -> Iterator[Server]:
    """A server whose workspaces live on their own network, behind the firewall."""
    remove_network(docker_client)
    server = Server(
        tmp_path_factory.mktemp("fenced"), env={"WORKSPACE_NETWORK_NAME": NETWORK, "WORKSPACE_REAP_INTERVAL": "2"}
    ).start()
    yield server
    server.stop()
    remove_network(docker_client)


def probe(client: Client, workspace_id: str, *targets: str) -> dict[str, str]:
    result = client.exec(workspace_id, ["python3", "-c", PROBE, json.dumps(targets)], timeout=120)
    assert result.exit_code == 0, result
    found = dict(json.loads(result.stdout))
    print(f"connections from {workspace_id}: {found}")  # the report, shown on failure or with -s
    return found


class Replicas:
    """`count` replicas of one deployment, as `make run REPLICAS=N` starts them: one data
    directory (so one instance id and one token secret), one PostgreSQL, each replica on a port
    of its own here so that a test can choose which one it talks to (and kill it)."""

    def __init__(self, data_dir: Path, database_url: str, count: int = 3, env: dict[str, str] | None = None) -> None:
        self.servers = [
            Server(
                data_dir,
                env={"WORKSPACE_DATABASE_URL": database_url, "WORKSPACE_REPLICA_ID": f"r{n}", **(env or {})},
                log_name=f"server-r{n}.log",
            )
            for n in range(1, count + 1)
        ]

    def start(self) -> Replicas:
        # The first one alone migrates the database; the others then start together.
        self.servers[0].start()
        with concurrent.futures.ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda server: server.start(), self.servers[1:]))
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __getitem__(self, index: int) -> Server:
        return self.servers[index]

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)


def address_of(client: docker.DockerClient, workspace_id: str) -> str:
    networks = client.api.inspect_container(f"agentbox-{workspace_id}")["NetworkSettings"]["Networks"]
    return str(networks[NETWORK]["IPAddress"])


def host_addresses(client: docker.DockerClient) -> list[str]:
    """The host as a workspace could name it: its gateway on the network, and its main address."""
    gateway = client.api.inspect_network(NETWORK)["IPAM"]["Config"][0]["Gateway"]
    route = subprocess.run(["ip", "-j", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True)
    return [gateway, json.loads(route.stdout)[0]["prefsrc"]]


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The admin URL of a real PostgreSQL on loopback (scripts/start-postgres.sh installs and starts it)."""
    script = Path(__file__).parents[2] / "scripts" / "start-postgres.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    """Three replicas of one deployment on a fresh PostgreSQL database, stopped afterwards."""
    running = Replicas(tmp_path, postgres_url).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh database of its own on that PostgreSQL, dropped afterwards."""
    name = f"agentbox_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(postgres_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    # The plain scheme, as a user would write it.
    yield postgres_admin.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://") + f"/{name}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()
