"""Idle suspend over real gVisor workspaces: one that waits is frozen (no CPU at all, by its cgroup's
figures), every way in wakes it and gets its answer, concurrent callers wake it once, what is at work
keeps it awake, and a suspended workspace outlives a server restart and is stopped, extended and
deleted like any other.

The tests run on a server of their own whose workspaces are suspended after 2 s unused (the shortest
idle timeout), looked for every half second."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import docker
import httpx
import httpx2
import pytest
from e2b import Sandbox
from websockets.sync.client import connect

from agentbox.cli.terminal import terminal_url
from agentbox.client import APIError, Client
from agentbox.providers.docker.usage import cgroup_usage
from agentbox.wire.processes import ProcessOutputEvent
from agentbox.wire.workspaces import WorkspaceOut
from tests.mcp_sessions import over_streamable_http, text

from .conftest import KEYS, PREVIEW_DOMAIN, Server, container_id, eventually, made, read_until

ECHO_SERVER = (Path(__file__).parent / "data" / "echo_server.py").read_bytes()
PORT = 8000
BUSY = "while True: pass"


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"WORKSPACE_IDLE_TIMEOUT": "2", "WORKSPACE_IDLE_CHECK_INTERVAL": "0.5", "WORKSPACE_USAGE_INTERVAL": "0"}
    server = Server(tmp_path_factory.mktemp("sleepy"), env=env)
    server.env["WORKSPACE_PREVIEW_DOMAIN"] = f"{PREVIEW_DOMAIN}:{server.port}"
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(sleepy: Server) -> Iterator[Client]:
    with sleepy.client("alice") as made:
        yield made


@pytest.fixture
def workspace(client: Client) -> Iterator[WorkspaceOut]:
    with made(client) as one:
        yield one


def asleep(client: Client, workspace_id: str) -> WorkspaceOut:
    """The workspace once it is suspended."""
    found: WorkspaceOut = eventually(lambda: (w := client.get(workspace_id)).suspended and w, timeout=60)
    return found


def stays_awake(client: Client, workspace_id: str, seconds: float = 5) -> bool:
    """Whether the workspace is not suspended once in `seconds` (2.5 times its idle timeout)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get(workspace_id).suspended:
            return False
        time.sleep(0.25)
    return True


def cpu_seconds(docker_client: docker.DockerClient, workspace_id: str) -> float:
    usage = cgroup_usage(container_id(docker_client, workspace_id))
    assert usage is not None
    return usage.cpu_seconds


def wakes(sleepy: Server) -> float:
    return sleepy.metrics().get("agentbox_workspace_wake_seconds_count", 0.0)


def test_an_idle_workspace_is_suspended_uses_no_cpu_and_its_next_command_wakes_it(
    sleepy: Server, client: Client, workspace: WorkspaceOut, docker_client: docker.DockerClient
) -> None:
    client.write_file(workspace.id, "/workspace/kept.txt", b"still here")
    suspended = asleep(client, workspace.id)
    assert suspended.status == "running" and suspended.suspended_at is not None and suspended.idle_timeout == 2
    before = cpu_seconds(docker_client, workspace.id)
    time.sleep(1.5)
    assert cpu_seconds(docker_client, workspace.id) == before  # frozen: not a nanosecond
    assert sleepy.metrics()["agentbox_workspaces_running{state=suspended}"] >= 1

    result = client.exec(workspace.id, "cat /workspace/kept.txt")
    assert (result.exit_code, result.stdout) == (0, "still here")
    awake = client.get(workspace.id)
    assert not awake.suspended and awake.suspended_at is None
    assert cpu_seconds(docker_client, workspace.id) > before


def _start_web(client: Client, workspace_id: str) -> None:
    client.write_file(workspace_id, "/workspace/echo_server.py", ECHO_SERVER)
    client.start_process(workspace_id, ["python3", "/workspace/echo_server.py", str(PORT)], tag="web")
    eventually(lambda: client._http.get(f"/workspaces/{workspace_id}/ports/{PORT}/ready").status_code == 200)


def _path_preview(sleepy: Server, client: Client, workspace_id: str) -> bool:
    preview = client._http.get(f"/workspaces/{workspace_id}/ports/{PORT}/url").json()
    page = httpx.get(preview["path_url"] + "page?q=1", timeout=30)
    return page.status_code == 200 and page.json()["path"] == "/page?q=1"


def _host_preview(sleepy: Server, client: Client, workspace_id: str) -> bool:
    preview = client._http.get(f"/workspaces/{workspace_id}/ports/{PORT}/url").json()
    parts = urlsplit(preview["url"])
    first = httpx.get(f"{sleepy.url}{parts.path}?{parts.query}", headers={"host": parts.netloc}, timeout=30)
    cookie = first.headers["set-cookie"].split(";")[0]
    page = httpx.get(f"{sleepy.url}/app.js", headers={"host": parts.netloc, "cookie": cookie}, timeout=30)
    return page.status_code == 200 and page.json()["path"] == "/app.js"


def _api_form(sleepy: Server, client: Client, workspace_id: str) -> bool:
    answer = client._http.get(f"/workspaces/{workspace_id}/ports/{PORT}/ready")
    return answer.status_code == 200


def _socket(sleepy: Server, client: Client, workspace_id: str) -> bool:
    url = sleepy.url.replace("http", "ws") + f"/api/v1/workspaces/{workspace_id}/ports/{PORT}/socket"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as socket:
        socket.send("hello")
        return socket.recv(timeout=30) == "echo: hello"


@pytest.mark.parametrize("way_in", [_path_preview, _host_preview, _api_form, _socket])
def test_a_dev_servers_preview_wakes_its_workspace(
    sleepy: Server, client: Client, workspace: WorkspaceOut, way_in: Callable[[Server, Client, str], bool]
) -> None:
    _start_web(client, workspace.id)  # a server waiting for requests does not keep its workspace awake
    asleep(client, workspace.id)
    assert way_in(sleepy, client, workspace.id)
    assert not client.get(workspace.id).suspended


def _files(client: Client, workspace_id: str) -> None:
    client.write_file(workspace_id, "/workspace/a.txt", b"written while asleep")
    assert client.read_file(workspace_id, "/workspace/a.txt") == b"written while asleep"


def _tools(client: Client, workspace_id: str) -> None:
    assert "/etc/hostname" in client.glob_tool(workspace_id, "hostname", "/etc").paths


def _processes(client: Client, workspace_id: str) -> None:
    started = client.start_process(workspace_id, ["echo", "from a process"])
    events = list(client.process_output(workspace_id, started.pid, follow=True))
    assert "from a process" in "".join(e.data for e in events if isinstance(e, ProcessOutputEvent))


def _process_list(client: Client, workspace_id: str) -> None:  # what the dashboard looks at
    assert isinstance(client.processes(workspace_id), list)
    assert isinstance(client.listening_ports(workspace_id), list)


def _sessions(client: Client, workspace_id: str) -> None:
    session = client.open_session(workspace_id)
    assert client.run_in_session(workspace_id, session, "echo $((6 * 7))").stdout.strip() == "42"


def _archive(client: Client, workspace_id: str) -> None:
    assert len(client.read_archive(workspace_id, "/etc")) > 0


@pytest.mark.parametrize("way_in", [_files, _tools, _processes, _process_list, _sessions, _archive])
def test_every_way_in_wakes_a_suspended_workspace_and_gets_its_answer(
    client: Client, workspace: WorkspaceOut, way_in: Callable[[Client, str], None]
) -> None:
    asleep(client, workspace.id)
    way_in(client, workspace.id)
    assert not client.get(workspace.id).suspended


def test_a_terminal_wakes_its_workspace_and_keeps_it_awake_while_attached(
    sleepy: Server, client: Client, workspace: WorkspaceOut
) -> None:
    shell = client.start_process(workspace.id, ["sh"], pty={"cols": 80, "rows": 24})
    asleep(client, workspace.id)
    url = terminal_url(sleepy.url, workspace.id, shell.pid)
    with connect(url, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as terminal:
        terminal.send(b"echo woke-$((40 + 2))\n")
        assert b"woke-42" in read_until(terminal, b"woke-42")
        assert stays_awake(client, workspace.id)  # attached and silent: awake
        terminal.send(b"echo still-$((1 + 1))\n")
        assert b"still-2" in read_until(terminal, b"still-2")
    asleep(client, workspace.id)  # detached: it waits again


def test_an_open_follower_and_a_busy_background_job_keep_a_workspace_awake(
    client: Client, docker_client: docker.DockerClient
) -> None:
    with made(client) as following, made(client) as busy:
        quiet = client.start_process(following.id, ["sleep", "600"])
        stream = client.process_output(following.id, quiet.pid, follow=True)
        reader = threading.Thread(target=lambda: list(stream), daemon=True)
        reader.start()
        job = client.start_process(busy.id, ["python3", "-c", BUSY])
        assert stays_awake(client, following.id) and stays_awake(client, busy.id)

        client.signal(busy.id, job.pid, "SIGKILL")
        asleep(client, busy.id)  # the job is over: it waits, and is suspended
        client.signal(following.id, quiet.pid, "SIGKILL")  # the follower ends with its process
        reader.join(timeout=30)
        asleep(client, following.id)


def test_concurrent_calls_wake_a_workspace_once(sleepy: Server, client: Client, workspace: WorkspaceOut) -> None:
    asleep(client, workspace.id)
    before = wakes(sleepy)
    answers: list[str] = []

    def call(n: int) -> None:
        with sleepy.client("alice") as own:
            answers.append(own.exec(workspace.id, f"echo {n}").stdout.strip())

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == [str(n) for n in range(8)]
    assert wakes(sleepy) == before + 1


def test_idle_timeout_zero_is_never_suspended_and_bad_values_are_refused(client: Client) -> None:
    with made(client, idle_timeout=0) as never:
        assert never.idle_timeout == 0
        assert stays_awake(client, never.id)
    for bad in (1, -1, "soon", 8 * 86400):
        with pytest.raises(APIError) as refused:
            client.create(provider="gvisor", idle_timeout=bad)  # type: ignore[arg-type]
        assert refused.value.status_code == 422 and "idle_timeout" in str(refused.value)


def test_e2b_calls_and_port_traffic_wake_a_sandbox(
    sleepy: Server, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_API_URL", f"{sleepy.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{sleepy.url}/e2b/envd")
    monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
    sandbox = Sandbox.create(timeout=300)
    try:
        sandbox.commands.run("python3 -m http.server 8000 --bind 127.0.0.1", background=True, timeout=0)
        host = sandbox.get_host(8000)
        eventually(lambda: httpx.get(f"{sleepy.url}/", headers={"Host": host}).status_code == 200, timeout=30)
        asleep(client, sandbox.sandbox_id)
        assert sandbox.commands.run("echo envd").stdout.strip() == "envd"
        asleep(client, sandbox.sandbox_id)
        page = httpx.get(f"{sleepy.url}/", headers={"Host": host}, timeout=30)
        assert page.status_code == 200 and "Directory listing" in page.text
        assert Sandbox.connect(sandbox.sandbox_id).is_running()
    finally:
        sandbox.kill()


def test_mcp_wakes_a_workspace(sleepy: Server, client: Client, workspace: WorkspaceOut) -> None:
    asleep(client, workspace.id)

    async def over_mcp() -> str:
        headers = {"Authorization": f"Bearer {KEYS['alice']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            over_streamable_http(http, f"{sleepy.url}/mcp") as session,
        ):
            return text(await session.call_tool("exec", {"workspace_id": workspace.id, "command": "echo mcp"}))

    assert "mcp" in asyncio.run(over_mcp())
    assert not client.get(workspace.id).suspended


def test_a_suspended_workspace_outlives_a_restart_and_is_stopped_extended_and_deleted(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    env = {"WORKSPACE_IDLE_TIMEOUT": "2", "WORKSPACE_IDLE_CHECK_INTERVAL": "0.5", "WORKSPACE_USAGE_INTERVAL": "0"}
    server = Server(tmp_path, env=env).start()
    made: list[str] = []
    try:
        with server.client() as client:
            kept, stopped = client.create(provider="gvisor"), client.create(provider="gvisor")
            made += [kept.id, stopped.id]
            waiting = client.start_process(kept.id, ["sleep", "600"])
            asleep(client, kept.id), asleep(client, stopped.id)
        server.stop()
        server.start()
        with server.client() as client:
            assert client.get(kept.id).suspended  # still frozen: a restart does not wake it
            before = cpu_seconds(docker_client, kept.id)
            time.sleep(1)
            assert cpu_seconds(docker_client, kept.id) == before
            extended = client.extend(kept.id, ttl_days=2)
            assert extended.suspended and extended.expires_at is not None
            assert waiting.pid in [p.pid for p in client.processes(kept.id) if p.status == "running"]  # it goes on
            assert client.stop(stopped.id).status == "stopped"
            assert not client.get(stopped.id).suspended
            assert client.start(stopped.id).status == "running"
            asleep(client, kept.id)
            client.delete(kept.id)
            assert eventually(lambda: kept.id not in server.containers(docker_client), timeout=60)
    finally:
        if server.process is not None:
            with server.client() as client:
                for workspace_id in made:
                    with contextlib.suppress(APIError):
                        client.delete(workspace_id)
        server.stop()


def test_another_owner_and_no_key_cannot_wake_a_workspace(
    sleepy: Server, client: Client, workspace: WorkspaceOut
) -> None:
    asleep(client, workspace.id)
    with sleepy.client("bob") as bob:
        for attempt in (lambda: bob.exec(workspace.id, "true"), lambda: bob.processes(workspace.id)):
            with pytest.raises(APIError) as refused:
                attempt()
            assert refused.value.status_code == 404
    anonymous = httpx.post(f"{sleepy.url}/api/v1/workspaces/{workspace.id}/exec", json={"command": "true"})
    assert anonymous.status_code == 401
    assert client.get(workspace.id).suspended  # refused before anything reached the sandbox
