"""Attacks on the edges (issue 26, items 6, 7, 9): a stranger writing into a workspace's audit trail,
a GitHub App's api_url aimed at the host's own network, setuid/device files on workspace disks,
and E2B sandboxes open to public traffic. Each is refused or contained, over real servers."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agentbox.client import APIError, Client

from .conftest import KEYS, Server, eventually
from .e2b_standin import E2BStandIn
from .github_standin import GitHubStandIn, new_private_key

ENCRYPTION_KEY = "cd" * 32
REPOSITORY = "octo/hello"
SECRET = "AKIAIOSFODNN7EXAMPLE-metadata-secret-Hx81"  # what an internal service would answer


# Item 6: the audit trail is its owner's.


def test_strangers_leave_nothing_in_a_workspaces_trail_and_the_owner_is_still_recorded(
    server: Server, alice: Client
) -> None:
    workspace = alice.create(provider="docker")
    try:
        base = f"{server.url}/api/v1/workspaces/{workspace.id}"
        big = {"command": "echo " + "A" * (4 << 20)}  # a big JSON body, as a flood of the trail would send
        strangers = [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Bearer {KEYS['bob']}"}]
        for headers in strangers:
            assert httpx.post(f"{base}/exec", json=big, headers=headers, timeout=60).status_code >= 400
            assert httpx.post(f"{base}/exec", json={"command": "id"}, headers=headers).status_code in (401, 404)
            assert httpx.get(base, headers=headers).status_code in (401, 404)
            assert httpx.delete(f"{base}/processes/1", headers=headers).status_code in (401, 404)

        alice.exec(workspace.id, "echo mine")
        alice.write_tool(workspace.id, "/workspace/big.txt", "B" * (100 << 10))  # past what is summarized
        trail = alice.audit(workspace.id).records
        assert [(r.owner, r.action) for r in reversed(trail)] == [
            ("alice", "POST /exec"),
            ("alice", "POST /tools/write"),
        ]
        assert trail[1].arguments == {"command": "echo mine"}
        # A body past what is summarized is kept as its size alone.
        (size,) = re.fullmatch(r"<(\d+) bytes>", trail[0].arguments.pop("body")).groups()  # type: ignore[union-attr]
        assert int(size) > 100 << 10 and trail[0].arguments == {}
        # Nor in the structured log: only alice's two calls are there for this workspace.
        logged = [
            json.loads(line.split(" agentbox.workspaces.audit: ", 1)[1])
            for line in server.log().splitlines()
            if " agentbox.workspaces.audit: " in line and workspace.id in line and '"audit": true' in line
        ]
        assert {entry["owner"] for entry in logged} == {"alice"} and len(logged) == 2
    finally:
        alice.delete(workspace.id)


# Item 7: a GitHub App's api_url cannot reach the host's own network.


class Listener:
    """A loopback port that counts who connects to it (what an internal service would see)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class _Secretive(BaseHTTPRequestHandler):
    """An allowed host that answers every call with a body that must never reach the caller."""

    def _answer(self) -> None:
        status = 401 if self.path.endswith("/access_tokens") else 500
        body = json.dumps({"message": f"internal: {SECRET}", "documentation_url": SECRET}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


@pytest.fixture(scope="module")
def secretive() -> Iterator[ThreadingHTTPServer]:
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Secretive)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield http
    http.shutdown()
    http.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubStandIn]:
    github = GitHubStandIn(app_id=4711, private_key=new_private_key(), root=tmp_path_factory.mktemp("github"))
    github.add_repository(REPOSITORY, {"README.md": "# hello\n"})
    github.start()
    yield github
    github.stop()


@pytest.fixture(scope="module")
def gh(
    tmp_path_factory: pytest.TempPathFactory, standin: GitHubStandIn, secretive: ThreadingHTTPServer
) -> Iterator[Server]:
    # Two loopback services allowed by host:port; the listener's port, on the same address, is not.
    allowed = f"127.0.0.1:{standin.port},127.0.0.1:{secretive.server_address[1]}"
    env = {"GITHUB_APP_ENCRYPTION_KEY": ENCRYPTION_KEY, "GITHUB_API_ALLOWED_HOSTS": allowed}
    server = Server(tmp_path_factory.mktemp("gh-attack"), env=env).start()
    yield server
    server.stop()


def register(server: Server, api_url: str, app_id: int = 1, private_key: str | None = None) -> httpx.Response:
    body = {"app_id": app_id, "private_key": private_key or new_private_key(), "api_url": api_url}
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    return httpx.post(f"{server.url}/api/v1/github/apps", json=body, headers=headers, timeout=30)


def test_an_api_url_on_the_hosts_own_network_is_refused_and_never_reached(gh: Server, listener: Listener) -> None:
    port = listener.port
    for api_url in (
        f"https://127.0.0.1:{port}/api/v3",
        f"http://127.0.0.1:{port}/api/v3",
        f"https://localhost:{port}/api/v3",  # a name that resolves to loopback
        f"https://[::1]:{port}/api/v3",
        f"https://[::ffff:127.0.0.1]:{port}/api/v3",
        "https://10.0.0.1/api/v3",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://100.64.0.1/api/v3",
    ):
        refused = register(gh, api_url)
        assert refused.status_code == 400, (api_url, refused.text)
        detail = refused.json()["detail"]
        assert "api_url" in detail and "GITHUB_API_ALLOWED_HOSTS" in detail, detail
    with gh.client() as alice:
        assert alice._call("GET", "/github/apps").json()["apps"] == []
    assert listener.connections == 0


def test_an_app_whose_host_moved_onto_the_hosts_network_is_refused_at_the_next_call(
    gh: Server, listener: Listener
) -> None:
    # Registered when its name pointed elsewhere (here: a name that does not resolve on this machine);
    # then it points at the host's loopback, as a DNS change would make it. Checked again at each call.
    registered = register(gh, "https://api.github.com")
    assert registered.status_code == 201, registered.text
    app = registered.json()["id"]
    with sqlite3.connect(gh.data_dir / "agentbox.db") as db:
        db.execute("UPDATE github_apps SET api_url = ? WHERE id = ?", (f"https://localhost:{listener.port}", app))
    with gh.client() as alice:
        with pytest.raises(APIError) as refused:
            alice.create(repo={"repository": REPOSITORY, "app": app}, provider="docker")
        assert refused.value.status_code == 502, refused.value
        assert "loopback" in refused.value.detail and "GITHUB_API_ALLOWED_HOSTS" in refused.value.detail
        assert alice.list() == []
        alice._call("DELETE", f"/github/apps/{app}")
    assert listener.connections == 0


def test_a_remotes_answer_is_never_repeated_in_an_error(gh: Server, secretive: ThreadingHTTPServer) -> None:
    registered = register(gh, f"http://127.0.0.1:{secretive.server_address[1]}/api/v3")  # allowed, so accepted
    assert registered.status_code == 201, registered.text
    app = registered.json()["id"]
    with gh.client() as alice:
        for installation in (None, 4242):  # a 500 for the installation, a 401 for the token
            repo = {"repository": REPOSITORY, "app": app} | ({"installation_id": installation} if installation else {})
            with pytest.raises(APIError) as failed:
                alice.create(repo=repo, provider="docker")
            assert failed.value.status_code == 502 and SECRET not in failed.value.detail, failed.value
            assert ("500" if installation is None else "401") in failed.value.detail, failed.value
        assert alice.list() == []
        alice._call("DELETE", f"/github/apps/{app}")


def test_an_allowed_github_stand_in_still_works(gh: Server, standin: GitHubStandIn) -> None:
    registered = register(gh, standin.api_url, standin.app_id, standin.private_key)
    assert registered.status_code == 201, registered.text
    with gh.client() as alice:
        workspace = alice.create(repo={"repository": REPOSITORY, "app": registered.json()["id"]}, provider="docker")
        try:
            assert alice.exec(workspace.id, "cat /workspace/hello/README.md").stdout == "# hello\n"
        finally:
            alice.delete(workspace.id)
        alice._call("DELETE", f"/github/apps/{registered.json()['id']}")


# Item 9: workspace disks and E2B's public traffic.


def _mount_options(mountinfo: str, mount_point: str) -> set[str]:
    """The per-mount and superblock options of `mount_point` in a /proc/<pid>/mountinfo."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[4] == mount_point:
            separator = fields.index("-")
            return set(fields[5].split(",")) | set(fields[separator + 3].split(","))
    raise AssertionError(f"{mount_point} is not mounted:\n{mountinfo}")


@pytest.mark.parametrize("provider", ["gvisor", "docker"])
def test_workspace_disks_are_mounted_nosuid_and_nodev(server: Server, alice: Client, provider: str) -> None:
    workspace = alice.create(provider=provider)
    try:
        # On the host: the disk's own filesystem (the loop device), which every bind mount of it inherits.
        with open("/proc/self/mountinfo") as host:
            on_host = _mount_options(host.read(), str(server.data_dir / "disks" / workspace.id))
        assert {"nosuid", "nodev"} <= on_host, on_host
        # Inside a runc workspace, /workspace is a bind mount of it: it carries the flags itself. A gVisor
        # workspace sees its own file server's mount (9p, no host flags listed); the files behind it are
        # opened on the host by gVisor's gofer, through the host's nosuid,nodev mount checked above.
        inside = _mount_options(alice.exec(workspace.id, "cat /proc/self/mountinfo").stdout, "/workspace")
        if provider == "docker":
            assert {"nosuid", "nodev"} <= inside, inside
    finally:
        alice.delete(workspace.id)


def test_e2b_sandboxes_are_made_without_public_traffic_and_previews_still_work(alice: Client, e2b: E2BStandIn) -> None:
    workspace = alice.create(provider="e2b")
    try:
        (sandbox,) = [s for s in e2b.sandboxes.values() if s.metadata.get("agentbox.workspace.id") == workspace.id]
        assert sandbox.public_traffic is False  # what agentbox asked E2B for
        alice.write_file(workspace.id, "/workspace/index.html", b"closed to strangers\n")
        alice.start_process(workspace.id, ["python3", "-m", "http.server", "8000", "--directory", "/workspace"])

        # agentbox reaches the port through its helper over envd (with the envd access token): it works.
        def preview() -> httpx.Response:
            return alice._http.get(f"/workspaces/{workspace.id}/ports/8000/index.html")

        eventually(lambda: preview().status_code == 200, timeout=60)
        assert preview().text == "closed to strangers\n"
        # At E2B's proxy, the sandbox's port answers only with its traffic token, which agentbox never gives out.
        at_e2b = {"E2b-Sandbox-Id": sandbox.id, "E2b-Sandbox-Port": "8000"}
        assert httpx.get(f"{e2b.url}/index.html", headers=at_e2b, timeout=30).status_code == 403
        with_token = at_e2b | {"E2b-Traffic-Access-Token": sandbox.traffic_token}
        answer = httpx.get(f"{e2b.url}/index.html", headers=with_token, timeout=30)
        assert answer.status_code == 200 and answer.text == "closed to strangers\n"
        # And envd itself answers only with the sandbox's access token (the stand-in enforces E2B's rule).
        stat = httpx.post(
            f"{e2b.url}/filesystem.Filesystem/Stat",
            json={"path": "/workspace"},
            headers={"E2b-Sandbox-Id": sandbox.id, "Content-Type": "application/json"},
        )
        assert stat.status_code == 401
    finally:
        alice.delete(workspace.id)
