"""Any replica answers any request: three `agentbox serve` replicas on one PostgreSQL and one engine, real
gVisor workspaces. What one replica opened (a shell session, a process's output, a terminal, a preview,
an E2B sandbox) is used through another, also after the first was SIGKILLed."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import TypedDict
from urllib.parse import urlsplit

import httpx
import pytest
from e2b import FilesystemEventType, NotFoundException, Sandbox
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from agentbox.cli.terminal import terminal_url
from agentbox.client import APIError, Client
from agentbox.db.store import Store
from agentbox.errors import Conflict
from agentbox.wire.commands import ErrorEvent
from agentbox.wire.processes import ProcessExitEvent, ProcessOutputEvent, SessionRunOut
from agentbox.wire.workspaces import WorkspaceOut
from agentbox.workspaces.session_claims import Claim, SessionClaims
from tests.session_claims import race_for_one_session

from .conftest import KEYS, Replicas, Server, eventually, read_until
from .test_previews import ECHO_SERVER, PORT


@pytest.fixture
def clients(replicas: Replicas) -> Iterator[list[Client]]:
    """Alice's client of each replica."""
    opened = [server.client("alice") for server in replicas]
    yield opened
    for client in opened:
        client.close()


@contextlib.contextmanager
def workspace_of(replicas: Replicas, client: Client) -> Iterator[WorkspaceOut]:
    """A gVisor workspace made through `client`, deleted afterwards through a replica still running."""
    made = client.create(provider="gvisor")
    try:
        yield made
    finally:
        alive = next(server for server in replicas if server.process is not None)
        with alive.client("alice") as survivor:
            survivor.delete(made.id)


def test_a_session_is_one_shell_whichever_replica_a_command_comes_through(
    replicas: Replicas, clients: list[Client]
) -> None:
    one, two, three = clients
    with workspace_of(replicas, one) as workspace:
        session = one.open_session(workspace.id, cwd="/tmp")
        first = two.run_in_session(workspace.id, session, "mkdir -p /tmp/s && cd /tmp/s && export A=1; echo first")
        assert (first.stdout, first.stderr, first.exit_code) == ("first\n", "", 0)
        second = three.run_in_session(workspace.id, session, 'pwd; echo "$A"; echo second >&2')
        assert (second.stdout, second.stderr) == ("/tmp/s\n1\n", "second\n")
        for n, client in enumerate([one, two, three, two, one] * 2):
            assert client.run_in_session(workspace.id, session, f"echo {n}").stdout == f"{n}\n"  # each its own

        # One command at a time, whichever replica it comes through.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(one.run_in_session, workspace.id, session, "echo started; sleep 8; echo done")
            eventually(lambda: "sleep 8" in one.exec(workspace.id, "ps -eo args").stdout, timeout=30)
            with pytest.raises(APIError) as busy:
                two.run_in_session(workspace.id, session, "echo meanwhile")
            assert busy.value.status_code == 409 and "running a command" in busy.value.detail
            assert (slow.result().stdout, slow.result().exit_code) == ("started\ndone\n", 0)
        assert three.run_in_session(workspace.id, session, "echo after").stdout == "after\n"

        # The replica running a command dies: the session is busy until its claim lapses, then it is
        # usable through another, whose command gets its own output only (not the dead one's).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            orphan = pool.submit(one.run_in_session, workspace.id, session, "echo orphan; sleep 600; echo never")
            eventually(lambda: "sleep 600" in two.exec(workspace.id, "ps -eo args").stdout, timeout=30)
            replicas[0].stop(kill=True)
            with pytest.raises(httpx.HTTPError):  # its caller lost its answer with it
                orphan.result()
        with pytest.raises(APIError) as held:
            two.run_in_session(workspace.id, session, "echo too-soon")
        assert held.value.status_code == 409

        def run_after_the_lease() -> SessionRunOut | None:
            try:
                return three.run_in_session(workspace.id, session, 'echo "mine $A"; pwd')
            except APIError as exc:
                assert exc.status_code == 409, exc
                return None

        after = eventually(run_after_the_lease, timeout=90, interval=1)
        assert after is not None
        assert (after.stdout, after.stderr, after.exit_code, after.timed_out) == ("mine 1\n/tmp/s\n", "", 0, False)
        assert "sleep 600" not in two.exec(workspace.id, "ps -eo args").stdout  # the orphan was interrupted
        assert two.run_in_session(workspace.id, session, "echo last").stdout == "last\n"
        two.close_session(workspace.id, session)
        assert three.sessions(workspace.id) == []


def test_a_follower_resumes_through_another_replica_without_losing_or_repeating_a_byte(
    replicas: Replicas, clients: list[Client]
) -> None:
    one, two, _ = clients
    with workspace_of(replicas, one) as workspace:
        # 100 lines, then (once /tmp/go exists) 2000 more as fast as the shell writes them.
        script = "for i in $(seq 1 100); do echo line-$i; done; until [ -e /tmp/go ]; do sleep 0.05; done; "
        script += "for i in $(seq 101 2100); do echo line-$i; done"
        process = one.start_process(workspace.id, ["bash", "-c", script])
        got, offset = "", 0
        events = one.process_output(workspace.id, process.pid, follow=True)
        for event in events:
            assert isinstance(event, ProcessOutputEvent), event
            assert event.offset == offset
            got, offset = got + event.data, event.next_offset
            if "line-100\n" in got:
                break
        two.write_file(workspace.id, "/tmp/go", b"")
        replicas[0].stop(kill=True)  # while the rest flows: its follower's answer is cut wherever it was
        with contextlib.suppress(httpx.HTTPError, APIError):
            for event in events:  # what was already on its way: still exact, then the cut
                if isinstance(event, ProcessOutputEvent):
                    assert event.offset == offset
                    got, offset = got + event.data, event.next_offset
        ended = None
        for event in two.process_output(workspace.id, process.pid, offset=offset, follow=True):
            if isinstance(event, ProcessOutputEvent):
                assert event.offset == offset
                got, offset = got + event.data, event.next_offset
            elif isinstance(event, ProcessExitEvent):
                ended = event
            else:
                assert not isinstance(event, ErrorEvent), event
        assert ended is not None and ended.exit_code == 0
        assert got == "".join(f"line-{i}\n" for i in range(1, 2101))


def test_a_terminal_reattaches_through_another_replica_after_its_own_died(
    replicas: Replicas, clients: list[Client]
) -> None:
    one = clients[0]
    bearer = {"Authorization": f"Bearer {KEYS['alice']}"}
    with workspace_of(replicas, one) as workspace:
        shell = one.start_process(workspace.id, ["bash", "--norc", "-i"], pty={"cols": 80, "rows": 24})
        with connect(terminal_url(replicas[0].url, workspace.id, shell.pid), additional_headers=bearer) as terminal:
            terminal.send(b"export MARK=kept; echo one-$((20+1))\n")
            seen = read_until(terminal, b"one-21")
            replicas[0].stop(kill=True)
            with pytest.raises(ConnectionClosed):
                while True:  # what was already on its way, then the cut
                    message = terminal.recv(timeout=30)
                    assert isinstance(message, bytes), message
                    seen += message
        # Through another replica, from where this client was: it goes on; from 0: all of it is replayed.
        # A token minted by one replica opens the terminal on another.
        token = httpx.post(
            terminal_url(replicas[1].url, workspace.id, shell.pid).replace("ws://", "http://") + "/token",
            headers=bearer,
            timeout=30,
        ).json()["token"]
        url = terminal_url(replicas[2].url, workspace.id, shell.pid)
        with connect(f"{url}?offset={len(seen)}&token={token}") as terminal:
            terminal.send(b"echo two-$MARK\n")
            continued = read_until(terminal, b"two-kept\r\n")
            assert b"one-21" not in continued  # nothing before the offset comes again
        with connect(url, additional_headers=bearer) as terminal:
            replayed = read_until(terminal, b"two-kept\r\n")
            assert replayed.startswith(seen) and replayed.index(b"one-21") < replayed.index(b"two-kept")
            terminal.send(b"exit 3\n")
            ended = None
            for message in terminal:
                if isinstance(message, str):
                    ended = json.loads(message)
        assert ended is not None and ended["exit_code"] == 3


def test_a_preview_link_works_through_every_replica_when_its_own_died(
    replicas: Replicas, clients: list[Client]
) -> None:
    one, two, _ = clients
    with workspace_of(replicas, one) as workspace:
        one.write_file(workspace.id, "/workspace/echo_server.py", ECHO_SERVER)
        one.start_process(workspace.id, ["python3", "/workspace/echo_server.py", str(PORT)], tag="web")
        api_path = f"/workspaces/{workspace.id}/ports/{PORT}/ready"
        eventually(lambda: one._http.get(api_path).status_code == 200, timeout=30)
        preview = one.preview_url(workspace.id, PORT)
        parts = urlsplit(preview.url)
        first = httpx.get(f"{replicas[0].url}{parts.path}?{parts.query}", headers={"host": parts.netloc})
        assert first.status_code == 307
        cookie = first.headers["set-cookie"].split(";")[0]
        replicas[0].stop(kill=True)

        path_suffix = urlsplit(preview.path_url).path
        for server in replicas.servers[1:]:
            by_path = httpx.get(f"{server.url}{path_suffix}from-path", timeout=30)
            assert by_path.status_code == 200 and by_path.json()["path"] == "/from-path"
            by_link = httpx.get(f"{server.url}/?{parts.query}", headers={"host": parts.netloc}, timeout=30)
            assert by_link.status_code == 307  # the link itself, as a browser would open it again
            by_cookie = httpx.get(f"{server.url}/from-host", headers={"host": parts.netloc, "cookie": cookie})
            assert by_cookie.status_code == 200 and by_cookie.json()["path"] == "/from-host"
        assert two._http.get(api_path).status_code == 200


class Via(TypedDict):
    """E2B's SDK pointed at one replica."""

    api_key: str
    api_url: str
    sandbox_url: str


def test_an_e2b_sandbox_is_served_by_any_replica(replicas: Replicas) -> None:
    def through(server: Server) -> Via:
        return Via(api_key=KEYS["alice"], api_url=f"{server.url}/e2b", sandbox_url=f"{server.url}/e2b/envd")

    sandbox = Sandbox.create(timeout=300, **through(replicas[0]))
    try:
        assert sandbox.commands.run("echo made-through-one").stdout == "made-through-one\n"
        sandbox.files.write("/home/user/note.txt", "written through one")
        script = "for i in $(seq 1 5); do echo tick-$i; done; until [ -e /tmp/go ]; do sleep 0.05; done; echo after"
        background = sandbox.commands.run(script, background=True)
        bounded = sandbox.commands.run("sleep 1000", background=True, timeout=4)  # a deadline r1 set
        sandbox.files.make_dir("/home/user/watched")
        watcher = sandbox.files.watch_dir("/home/user/watched")
        sandbox.files.write("/home/user/watched/before.txt", "seen through one")
        replicas[0].stop(kill=True)

        again = Sandbox.connect(sandbox.sandbox_id, **through(replicas[1]))
        assert again.files.read("/home/user/note.txt") == "written through one"
        assert again.commands.run("echo served-by-two").stdout == "served-by-two\n"
        assert background.pid in [p.pid for p in again.commands.list()]
        third = Sandbox.connect(sandbox.sandbox_id, **through(replicas[2]))
        handle = third.commands.connect(background.pid)  # replays what it printed so far, then follows
        again.files.write("/tmp/go", "")
        result = handle.wait()
        assert result.exit_code == 0
        assert result.stdout == "".join(f"tick-{i}\n" for i in range(1, 6)) + "after\n"
        listed = [s.sandbox_id for s in Sandbox.list(**through(replicas[2])).next_items()]
        assert sandbox.sandbox_id in listed

        # The watcher made through r1 goes on through r2: what it saw before, then after, each once.
        watcher._rpc = again.files._rpc  # the SDK's handle, pointed at another replica as a reconnect would
        again.files.write("/home/user/watched/after.txt", "seen through two")
        seen: list[tuple[str, FilesystemEventType]] = []

        def after_seen() -> bool:
            seen.extend((e.name, e.type) for e in watcher.get_new_events())
            return ("after.txt", FilesystemEventType.WRITE) in seen

        eventually(after_seen, timeout=20)
        written = (FilesystemEventType.CREATE, FilesystemEventType.WRITE, FilesystemEventType.CHMOD)
        assert seen == [("before.txt", kind) for kind in written] + [("after.txt", kind) for kind in written]
        watcher.stop()
        watcher._closed = False  # the SDK refuses a stopped handle itself: ask the server
        with pytest.raises(NotFoundException):
            watcher.get_new_events()
        # The deadline r1 set ends the command though r1 is gone.
        eventually(lambda: bounded.pid not in [p.pid for p in again.commands.list()], timeout=30)
    finally:
        killed = Sandbox.kill(sandbox.sandbox_id, **through(replicas[2]))
    assert killed is True
    assert Sandbox.kill(sandbox.sandbox_id, **through(replicas[1])) is False  # gone for every replica


def test_on_postgresql_one_claim_of_a_session_wins_and_a_lapsed_one_is_free(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        store.migrate()
        assert race_for_one_session(store) == [False] * 31 + [True]
        # A session no replica has recorded yet: the first inserts its row, the next finds it held.
        assert SessionClaims(store, "r1").take("ws-c", 3, "n1") == Claim(read_to=None, pending=None)
        with pytest.raises(Conflict):
            SessionClaims(store, "r2").take("ws-c", 3, "n2")
        lapsed = SessionClaims(store, "r-dead", lease=timedelta(seconds=-1))
        lapsed.take("ws-b", 1, "n1")
        assert SessionClaims(store, "r2").take("ws-b", 1, "n2") == Claim(read_to=None, pending=None)
    finally:
        store.close()
