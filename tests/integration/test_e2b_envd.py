"""envd served by agentbox: E2B's SDK, unmodified, runs commands and moves files in real gVisor sandboxes.

The SDK is pointed at the server under test by its own variables only (E2B_API_URL,
E2B_SANDBOX_URL, E2B_API_KEY); each behaviour of E2B's commands, PTY and filesystem
modules that agentbox offers is driven through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNetworkOpts,
    SandboxNotFoundException,
    SandboxState,
    Template,
    TimeoutException,
)

from .conftest import KEYS, PREVIEW_DOMAIN, Server, eventually


@pytest.fixture
def sandbox(sdk: str) -> Iterator[Sandbox]:
    made = Sandbox.create(timeout=300)
    yield made
    made.kill()


def test_base_template_looks_like_e2bs(sandbox: Sandbox) -> None:
    whoami = sandbox.commands.run("whoami; id -u; id -gn; echo $HOME; pwd")
    assert whoami.stdout.split() == ["user", "1000", "user", "/home/user", "/home/user"]
    tools = sandbox.commands.run("for t in bash python3 python git curl tput; do command -v $t; done")
    assert len(tools.stdout.split()) == 6
    assert sandbox.commands.run("python --version").stdout.startswith("Python 3")
    with pytest.raises(CommandExitException) as refused:
        sandbox.commands.run("sudo true")  # the one deliberate difference: no setuid escalation
    assert refused.value.exit_code != 0
    assert Template.exists("base") is True
    assert Template.exists("no-such-template") is False


def test_commands_run_with_envs_cwd_and_exit_codes(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("work")
    done = sandbox.commands.run('echo "$GREETING from $(pwd)"; echo oops >&2', envs={"GREETING": "hi"}, cwd="work")
    assert (done.stdout, done.stderr, done.exit_code) == ("hi from /home/user/work\n", "oops\n", 0)
    seen: list[str] = []
    sandbox.commands.run("printf 'a\\nb\\n'", on_stdout=seen.append)
    assert "".join(seen) == "a\nb\n"
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; exit 3")
    assert (failed.value.exit_code, failed.value.stdout) == (3, "partial\n")
    with pytest.raises(SandboxException, match="root"):  # no root user: refused, not run as someone else
        sandbox.commands.run("true", user="root")


def test_background_commands_have_real_pids_and_can_be_listed_connected_and_killed(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("echo started; sleep 60", background=True)
    # The PID is the one inside the sandbox.
    assert "sleep 60" in sandbox.commands.run(f"tr '\\0' ' ' < /proc/{handle.pid}/cmdline").stdout
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    handle.disconnect()  # the command runs on without a client
    again = sandbox.commands.connect(handle.pid)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as ended:
        again.wait()
    assert "started\n" in ended.value.stdout
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is False  # gone: envd's not_found


def test_stdin_is_sent_and_closed(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "hello ")
    sandbox.commands.send_stdin(handle.pid, b"world")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello world"


def test_a_command_past_its_timeout_is_ended(sandbox: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=2)
    eventually(lambda: not [p for p in sandbox.commands.list() if "sleep 30" in " ".join(p.args)], timeout=20)


def test_pty_create_input_resize_and_kill(sandbox: Sandbox) -> None:
    output = bytearray()
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=60)

    def read() -> None:
        with contextlib.suppress(CommandExitException):  # the kill ends it
            terminal.wait(on_pty=output.extend)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sandbox.pty.send_stdin(terminal.pid, b"stty size; echo mark-$((6*7))\n")
    eventually(lambda: b"mark-42" in output and b"24 80" in output, timeout=20)
    sandbox.pty.resize(terminal.pid, PtySize(rows=40, cols=100))
    sandbox.pty.send_stdin(terminal.pid, b"stty size\n")
    eventually(lambda: b"40 100" in output, timeout=20)
    assert sandbox.pty.kill(terminal.pid) is True
    reader.join(timeout=20)
    assert not reader.is_alive()


def test_files_written_and_read_every_way(sandbox: Sandbox) -> None:
    info = sandbox.files.write("notes/a.txt", "text")  # parents are made
    assert (info.path, info.type) == ("/home/user/notes/a.txt", FileType.FILE)
    sandbox.files.write("notes/b.bin", b"\x00\x01bytes")
    sandbox.files.write("notes/c.txt", iter([b"stre", b"amed"]))  # octet-stream, chunked
    sandbox.files.write("notes/d.txt", "compressed " * 1000, gzip=True)  # octet-stream, Content-Encoding: gzip
    sandbox.files.write_files([{"path": "notes/e.txt", "data": "one"}, {"path": "/tmp/f.txt", "data": "two"}])
    assert sandbox.files.read("notes/a.txt") == "text"
    assert sandbox.files.read("/home/user/notes/b.bin", format="bytes") == bytearray(b"\x00\x01bytes")
    assert b"".join(sandbox.files.read("notes/c.txt", format="stream")) == b"streamed"
    assert sandbox.files.read("notes/d.txt") == "compressed " * 1000
    assert (sandbox.files.read("notes/e.txt"), sandbox.files.read("/tmp/f.txt")) == ("one", "two")
    with pytest.raises(NotFoundException):
        sandbox.files.read("notes/missing.txt")
    with pytest.raises(InvalidArgumentException, match="metadata"):  # no extended attributes under gVisor here
        sandbox.files.write("notes/g.txt", "x", metadata={"k": "v"})


def test_files_listed_inspected_made_moved_and_removed(sandbox: Sandbox) -> None:
    sandbox.files.write("tree/sub/leaf.txt", "leaf")
    sandbox.commands.run("ln -s sub/leaf.txt link.txt && chmod 600 sub/leaf.txt", cwd="tree")
    assert [e.name for e in sandbox.files.list("tree")] == ["link.txt", "sub"]
    assert [e.path for e in sandbox.files.list("tree", depth=2)] == [
        "/home/user/tree/link.txt",
        "/home/user/tree/sub",
        "/home/user/tree/sub/leaf.txt",
    ]
    leaf = sandbox.files.get_info("tree/sub/leaf.txt")
    assert (leaf.size, leaf.mode, leaf.permissions, leaf.owner, leaf.group) == (4, 0o600, "-rw-------", "user", "user")
    assert leaf.modified_time is not None and leaf.modified_time.tzinfo is not None
    link = sandbox.files.get_info("tree/link.txt")
    assert link.symlink_target == "/home/user/tree/sub/leaf.txt"
    directory = sandbox.files.get_info("tree/sub")
    assert (directory.type, directory.permissions) == (FileType.DIR, "drwxr-xr-x")

    assert sandbox.files.exists("tree/sub") and not sandbox.files.exists("tree/nothing")
    assert sandbox.files.make_dir("tree/new/deeper") is True
    assert sandbox.files.make_dir("tree/new/deeper") is False  # already there
    moved = sandbox.files.rename("tree/sub/leaf.txt", "tree/new/leaf.txt")
    assert moved.path == "/home/user/tree/new/leaf.txt" and sandbox.files.read("tree/new/leaf.txt") == "leaf"
    sandbox.files.remove("tree/new")
    sandbox.files.remove("tree/never-was")  # no error, as envd
    assert not sandbox.files.exists("tree/new")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info("tree/new")


def test_watch_dir_reports_writes_as_envd_does(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("watched")
    handle = sandbox.files.watch_dir("watched", recursive=True)
    sandbox.files.write("watched/one.txt", "1")
    sandbox.files.make_dir("watched/inner")
    sandbox.commands.run("echo 2 > watched/inner/two.txt && rm watched/one.txt")
    seen: list[tuple[str, FilesystemEventType]] = []

    def two_written() -> bool:
        seen.extend((e.name, e.type) for e in handle.get_new_events())
        return ("inner/two.txt", FilesystemEventType.WRITE) in seen

    eventually(two_written, timeout=20)
    assert not [p for p in sandbox.commands.list() if p.cmd == "watch"]  # envd lists no watcher as a command
    handle.stop()
    # agentbox's whole-file write reads as envd's in-place one; its temporary file is not seen.
    assert seen[:3] == [
        ("one.txt", t) for t in (FilesystemEventType.CREATE, FilesystemEventType.WRITE, FilesystemEventType.CHMOD)
    ]
    assert ("one.txt", FilesystemEventType.REMOVE) in seen
    assert not [name for name, _ in seen if ".agentbox-put." in name]


def test_async_sandbox_watches_with_callbacks(sdk: str) -> None:
    async def scenario() -> list[str]:
        sandbox = await AsyncSandbox.create(timeout=120)
        try:
            names: list[str] = []
            await sandbox.files.make_dir("w")
            handle = await sandbox.files.watch_dir("w", on_event=lambda e: names.append(e.name))
            await sandbox.files.write("w/x.txt", "x")
            for _ in range(100):
                if "x.txt" in names:
                    break
                await asyncio.sleep(0.1)
            await handle.stop()  # type: ignore[no-untyped-call]
            output = await sandbox.commands.run("echo async")
            assert output.stdout == "async\n"
            return names
        finally:
            await sandbox.kill()

    assert "x.txt" in asyncio.run(scenario())


def test_signed_file_urls_work_until_they_expire(sandbox: Sandbox) -> None:
    sandbox.files.write("shared.txt", "signed content")
    with urllib.request.urlopen(sandbox.download_url("shared.txt", "user", 60)) as answer:
        assert answer.read() == b"signed content"
    upload = sandbox.upload_url("uploaded.txt", "user", 60)
    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=uploaded.txt\r\n\r\nup\r\n--b--\r\n"
    posted = httpx.post(upload, content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert posted.status_code == 200 and sandbox.files.read("uploaded.txt") == "up"
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(sandbox.download_url("shared.txt", "user", use_signature_expiration=-10))
    assert (expired.value.code, json.loads(expired.value.read())) == (
        401,
        {"code": 401, "message": "signature is already expired"},
    )
    forged = sandbox.download_url("shared.txt", "user", 60).replace("signature=v1_", "signature=v1_x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged)
    assert refused.value.code in (401, 502)  # a forged signature names no sandbox


def test_envd_checks_the_access_token_and_hides_other_owners(sandbox: Sandbox, server: Server) -> None:
    envd = f"{server.url}/e2b/envd"
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "Content-Type": "application/json"}
    stat = f"{envd}/filesystem.Filesystem/Stat"
    assert httpx.post(stat, json={"path": "/home/user"}, headers=headers).status_code == 401
    wrong = {**headers, "X-Access-Token": "not-the-token"}
    refused = httpx.post(stat, json={"path": "/home/user"}, headers=wrong)
    assert (refused.status_code, refused.json()["code"]) == (401, "unauthenticated")
    # Bob's key makes Bob's token for the id: it opens nothing of Alice's.
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox.sandbox_id, api_key=KEYS["bob"])
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id, api_key=KEYS["bob"])
    # A malformed Connect message is a Connect error, never a 500.
    token = {**headers, "X-Access-Token": sandbox._envd_access_token or ""}
    broken = httpx.post(stat, content=b"{not json", headers=token)
    assert broken.status_code < 500 and "code" in broken.json()
    frame = httpx.post(
        f"{envd}/process.Process/Start",
        content=b"\x00\x00\x00\x00\x09{}",  # an envelope announcing more than it holds
        headers={**token, "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"},
    )
    assert frame.status_code < 500
    unknown = httpx.get(f"{envd}/health", headers={"E2b-Sandbox-Id": "ws-0000000000000000"})
    assert unknown.status_code == 502 and "was not found" in unknown.json()["message"]


def test_the_host_form_reaches_envd(sandbox: Sandbox, server: Server) -> None:
    host = f"49983-{sandbox.sandbox_id}.{PREVIEW_DOMAIN}:{server.port}"
    token = {"Host": host, "X-Access-Token": sandbox._envd_access_token or ""}
    assert httpx.get(f"{server.url}/health", headers={"Host": host}).status_code == 204
    sandbox.files.write("via-host.txt", "host form")
    read = httpx.get(f"{server.url}/files", params={"path": "via-host.txt"}, headers=token)
    assert read.content == b"host form"


def test_pause_keeps_files_and_connect_resumes(sandbox: Sandbox) -> None:
    sandbox.files.write("kept.txt", "still here")
    sandbox.pause()
    assert sandbox.get_info().state == SandboxState.PAUSED
    assert sandbox.is_running() is False
    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=120)
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.files.read("kept.txt") == "still here"


def test_pause_of_a_sandbox_without_internet_keeps_its_processes(sdk: str) -> None:
    sandbox = Sandbox.create(allow_internet_access=False, timeout=300)
    try:
        counting = "i=0; while true; do i=$((i+1)); echo $i > count; sleep 0.05; done"  # the count is in memory
        sandbox.files.write("count", "0")
        handle = sandbox.commands.run(counting, background=True)

        def count(sbx: Sandbox) -> int:
            try:
                return int(sbx.files.read("count").strip() or 0)  # empty while the shell rewrites it
            except SandboxException:  # it shrank while it was read: read again
                return 0

        eventually(lambda: count(sandbox) >= 5)
        sandbox.pause()
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=300)
        assert handle.pid in [process.pid for process in resumed.commands.list()]
        first = eventually(lambda: count(resumed))
        assert first >= 5  # the same shell, counting on from its memory
        assert eventually(lambda: count(resumed) > first + 5)
    finally:
        sandbox.kill()


def test_a_full_pause_restores_the_same_boot_and_a_filesystem_pause_reboots(sdk: str) -> None:
    sandbox = Sandbox.create(allow_internet_access=False, timeout=300)
    try:

        def boot_id() -> str:
            return sandbox.files.read("/proc/sys/kernel/random/boot_id").strip()

        booted = boot_id()
        sandbox.files.write("kept.txt", "on the disk")
        sandbox.pause()
        sandbox.connect(timeout=300)
        assert boot_id() == booted  # restored in place, memory and all
        sandbox.pause(keep_memory=False)
        sandbox.connect(timeout=300)
        assert boot_id() != booted  # booted afresh from its files
        assert sandbox.files.read("kept.txt") == "on the disk"
        sandbox.pause()
        sandbox.connect(timeout=300, on_resume="reboot")  # a memory pause, resumed by a fresh boot
        assert boot_id() not in (booted, "")
    finally:
        sandbox.kill()


def test_a_sandbox_paused_at_its_timeout_is_woken_by_its_own_traffic(sdk: str) -> None:
    sandbox = Sandbox.create(
        allow_internet_access=False, timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": True}
    )
    try:
        handle = sandbox.commands.run("sleep 600", background=True)
        time.sleep(3.5)
        assert sandbox.get_info().state == SandboxState.PAUSED  # at its timeout: paused, not killed
        assert handle.pid in [process.pid for process in sandbox.commands.list()]  # woken, its process alive
        info = sandbox.get_info()
        assert info.state == SandboxState.RUNNING and info.end_at > datetime.now(UTC)
    finally:
        sandbox.kill()


def test_a_sandbox_past_its_timeout_is_gone_at_once(sandbox: Sandbox) -> None:
    sandbox.set_timeout(1)
    time.sleep(2)
    assert sandbox.is_running() is False  # not only after the reaper's next round
    with pytest.raises(SandboxNotFoundException):
        sandbox.get_info()


def test_a_wrong_key_is_refused_before_anything_runs(sdk: str) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="not-a-key")


def test_gzip_upload_that_is_not_gzip_is_a_clear_400(sandbox: Sandbox, server: Server) -> None:
    token = {"E2b-Sandbox-Id": sandbox.sandbox_id, "X-Access-Token": sandbox._envd_access_token or ""}
    bad = httpx.post(
        f"{server.url}/e2b/envd/files",
        params={"path": "x.txt"},
        content=b"plain",
        headers={**token, "Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert bad.status_code == 400 and "gzip" in bad.json()["message"]
    good = httpx.post(
        f"{server.url}/e2b/envd/files",
        params={"path": "x.txt"},
        content=gzip.compress(b"zipped"),
        headers={**token, "Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert good.status_code == 200 and sandbox.files.read("x.txt") == "zipped"


def test_the_server_says_where_e2bs_sdk_goes(server: Server) -> None:
    health = httpx.get(f"{server.url}/api/v1/health").json()
    assert (health["e2b_api_url"], health["e2b_sandbox_url"]) == (f"{server.url}/e2b", f"{server.url}/e2b/envd")
    assert f"E2B_API_URL={server.url}/e2b E2B_SANDBOX_URL={server.url}/e2b/envd" in server.log_path.read_text()


def test_get_host_reaches_ports_publicly_unless_the_sandbox_asks_otherwise(sandbox: Sandbox, server: Server) -> None:
    sandbox.commands.run("python3 -m http.server 8000 --bind 127.0.0.1", background=True, timeout=0)
    host = sandbox.get_host(8000)
    assert host == f"8000-{sandbox.sandbox_id}.{PREVIEW_DOMAIN}:{server.port}"  # the preview host form
    page = eventually(lambda: _fetched(server, host), timeout=30)
    assert page.status_code == 200 and "Directory listing" in page.text

    private = Sandbox.create(timeout=120, network=SandboxNetworkOpts(allow_public_traffic=False))
    try:
        assert private.traffic_access_token
        private.commands.run("python3 -m http.server 8000 --bind 127.0.0.1", background=True, timeout=0)
        private_host = private.get_host(8000)
        opened = eventually(lambda: _fetched(server, private_host, private.traffic_access_token), timeout=30)
        assert opened.status_code == 200
        assert _fetched(server, private_host).status_code == 403  # no token: E2B's answer too
        assert _fetched(server, private_host, "forged").status_code == 403
    finally:
        private.kill()


#: A server that answers every GET with the Host header it received.
ECHO_HOST = """
import http.server


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.headers["Host"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer(("127.0.0.1", 8000), Echo).serve_forever()
"""


def test_mask_request_host_is_the_host_the_app_sees_and_routes_nothing(sandbox: Sandbox, server: Server) -> None:
    # The mask names the fixture's sandbox's own host: the request still reaches the masked sandbox.
    other = f"8000-{sandbox.sandbox_id}.{PREVIEW_DOMAIN}:{server.port}"
    masked = Sandbox.create(timeout=120, network=SandboxNetworkOpts(mask_request_host="${PORT}-app.example.test"))
    spoofing = Sandbox.create(
        timeout=120, network=SandboxNetworkOpts(mask_request_host=other.replace("8000", "${PORT}", 1))
    )
    try:
        for each in (masked, spoofing):
            each.files.write("echo_host.py", ECHO_HOST)
            each.commands.run("python3 echo_host.py", background=True, timeout=0)
        page = eventually(lambda: _fetched(server, masked.get_host(8000)), timeout=30)
        assert page is not None and page.status_code == 200 and page.text == "8000-app.example.test"
        by_header = httpx.get(
            f"{server.url}/e2b/envd/", headers={"E2b-Sandbox-Id": masked.sandbox_id, "E2b-Sandbox-Port": "8000"}
        )
        assert by_header.status_code == 200 and by_header.text == "8000-app.example.test"
        shown = masked.get_info().network
        assert shown is not None and shown.get("mask_request_host") == "${PORT}-app.example.test"
        # The fixture's sandbox runs no server: an answer at all comes from the spoofing sandbox, by its own URL.
        spoofed = eventually(lambda: _fetched(server, spoofing.get_host(8000)), timeout=30)
        assert spoofed is not None and spoofed.status_code == 200 and spoofed.text == other
        assert _fetched(server, other) is None  # the fixture's own port: nothing listens, a 502
    finally:
        masked.kill()
        spoofing.kill()

    plain = eventually(lambda: _echoed(sandbox, server), timeout=30)
    assert plain == "localhost:8000"  # no mask: agentbox's own, as before


def _echoed(sandbox: Sandbox, server: Server) -> str | None:
    if not sandbox.files.exists("echo_host.py"):
        sandbox.files.write("echo_host.py", ECHO_HOST)
        sandbox.commands.run("python3 echo_host.py", background=True, timeout=0)
    page = _fetched(server, sandbox.get_host(8000))
    return page.text if page is not None else None


def _fetched(server: Server, host: str, traffic_token: str | None = None) -> httpx.Response | None:
    headers = {"Host": host} | ({"e2b-traffic-access-token": traffic_token} if traffic_token else {})
    answer = httpx.get(f"{server.url}/", headers=headers)
    return answer if answer.status_code != 502 else None  # 502: nothing listens yet


def test_egress_options_are_enforced_or_refused(sdk: str, server: Server) -> None:
    fenced = Sandbox.create(timeout=60, network=SandboxNetworkOpts(deny_out=["0.0.0.0/0"]))
    try:
        with server.client("alice") as alice:
            assert alice.get(fenced.sandbox_id).network == "none"  # the firewall's own tests show what that means
    finally:
        fenced.kill()
    # An allow list needs the workspace network, which this server has not: refused, saying so.
    with pytest.raises(SandboxException, match="cannot enforce"):
        Sandbox.create(network=SandboxNetworkOpts(deny_out=["0.0.0.0/0"], allow_out=["10.9.8.0/24"]))
    with pytest.raises(SandboxException, match="cannot enforce"):  # a deny list needs the egress proxy too
        Sandbox.create(network=SandboxNetworkOpts(deny_out=["10.0.0.0/8"]))
    with pytest.raises(SandboxException, match="maskRequestHost"):  # not a Host: refused, not ignored
        Sandbox.create(network=SandboxNetworkOpts(mask_request_host="x\r\nX-Injected: 1"))
