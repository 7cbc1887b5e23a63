"""The helper's control socket, end to end on the host: the real helper serving, the real transport asking.

No Docker: the helper is a static Linux binary, run here as it runs as a workspace's init. The
calls run over both of its transports, the Unix socket and the TCP channel (tests/unit/test_helper_tcp.py
has what only TCP has: its handshake and what it refuses).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox.errors import BadRequest, FileError
from agentbox.sandbox import build
from agentbox.sandbox.channel import Call, HelperChannel, Invocation
from agentbox.sandbox.control import ControlSocketError, ControlSocketTransport, SocketFirst
from agentbox.sandbox.handshake import key_file_text
from agentbox.sandbox.process_table import ProcessEnded, ProcessOutput, ProcessRequest
from agentbox.sandbox.runtime import ExecRequest, WatchEvent, collect
from agentbox.sandbox.tcp import TcpTransport
from agentbox.sandbox.watchers import READY, events_after, start_watch

if not (shutil.which("cc") or shutil.which("gcc")):
    pytest.skip("no C compiler (cc) on PATH; cannot build agentbox-exec", allow_module_level=True)


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build(tmp_path_factory.mktemp("helper") / "agentbox-exec", strict=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(
    helper: str, directory: Path, workspace_id: str, key: bytes | None = None, port: int = 0
) -> subprocess.Popen[bytes]:
    """The helper's init serving `directory`/control.sock and, with `key`, TCP `port` on loopback."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [helper, "init", "-S", str(directory / "control.sock"), "-I", workspace_id]
    if key is not None:
        key_file = directory / "helper-key"
        key_file.write_bytes(key_file_text(key))
        key_file.chmod(0o400)
        argv += ["-K", str(key_file), "-T", str(port)]
    init = subprocess.Popen(argv)
    deadline = time.monotonic() + 5
    while not (directory / "control.sock").exists() or (key is not None and not listening(port)):
        assert time.monotonic() < deadline, "the helper never made its socket"
        time.sleep(0.01)
    return init


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(params=["socket", "tcp"])
def workspace(request: pytest.FixtureRequest, helper: str, tmp_path: Path) -> Iterator[tuple[HelperChannel, Path]]:
    if request.param == "socket":
        init = serve(helper, tmp_path / "run", "ws-a")
        yield HelperChannel(ControlSocketTransport(tmp_path / "run" / "control.sock", "ws-a")), tmp_path
    else:
        key, port = secrets.token_bytes(32), free_port()
        init = serve(helper, tmp_path / "run", "ws-a", key, port)
        yield HelperChannel(TcpTransport("ws-a", key, port, lambda fresh: "127.0.0.1")), tmp_path
    init.terminate()
    init.wait()


def run(channel: HelperChannel, script: str, cwd: str, **options: object) -> tuple[int, str, str, bool]:
    request = ExecRequest(argv=["/bin/sh", "-c", script], cwd=cwd, **options)  # type: ignore[arg-type]
    result = collect(channel.exec_stream(request), request.output_limit)
    return result.exit_code, result.stdout, result.stderr, result.timed_out


def test_commands_run_with_their_cwd_env_streams_and_exit_code(workspace: tuple[HelperChannel, Path]) -> None:
    channel, home = workspace
    assert run(channel, 'echo "$GREETING from $PWD"; echo oops >&2; exit 3', str(home), env={"GREETING": "hi"}) == (
        3,
        f"hi from {home}\n",
        "oops\n",
        False,
    )
    code, _, _, timed_out = run(channel, "sleep 5", str(home), timeout=0.3)
    assert (code, timed_out) == (124, True)


def test_a_worker_serves_call_after_call_and_nothing_of_one_reaches_the_next(
    workspace: tuple[HelperChannel, Path],
) -> None:
    channel, home = workspace
    (home / "sub").mkdir()
    workers = set()
    calls = 12
    for _ in range(calls):
        code, out, _, _ = run(
            channel, 'echo "$PPID ${SECRET:-unset} $PWD"; exit 7', str(home / "sub"), env={"SECRET": "s"}
        )
        workers.add(out.split()[0])
        assert (code, out.split()[1:]) == (7, ["s", str(home / "sub")])
    # Short calls one after another take no fork: the two waiting workers serve them (more come in when
    # a call outlasts the 100 ms after which a replacement is made, as on a loaded machine; four of six
    # were seen), so workers serve several calls each, where a server forking per call shows one each.
    assert len(workers) < calls, f"{len(workers)} workers for {calls} calls: the control server forks per call again"
    # After a timeout, a refused start and a file write, the next call starts clean.
    assert run(channel, "sleep 5", str(home), timeout=0.2)[3]
    with pytest.raises(BadRequest):
        run(channel, "true", str(home / "nowhere"))
    channel.write_file(str(home / "f"), [b"x"], 1)
    # 0-2, the listening sockets, the server's, the call's, the command's two pipes. Counted again a few
    # times: just after the command starts, the worker may not have closed its ends of the start's pipes.
    most = 8 + isinstance(channel.transport, TcpTransport)
    count = f'for i in 1 2 3 4 5; do n=$(ls /proc/$PPID/fd | wc -l); [ "$n" -le {most} ] && break; sleep 0.1; done'
    for _ in range(4):
        code, out, err, _ = run(
            channel, f'echo "${{SECRET:-unset}}"; {count}; echo $n; pwd; ls -l /proc/$PPID/fd >&2', ""
        )
        assert out.split()[0] == "unset" and out.split()[2] == os.getcwd()  # the helper's own cwd again
        assert int(out.split()[1]) <= most, f"the worker holds fds a call left open: {err}"


def test_a_command_that_leaves_a_background_process_holding_its_output(workspace: tuple[HelperChannel, Path]) -> None:
    channel, home = workspace
    assert run(channel, "sleep 3 & echo started", str(home))[:2] == (0, "started\n")
    assert run(channel, "echo next", str(home))[:2] == (0, "next\n")


def test_files_go_both_ways_byte_exact(workspace: tuple[HelperChannel, Path]) -> None:
    channel, home = workspace
    data = os.urandom(3 << 20)  # binary, several frames' worth
    assert channel.write_file(str(home / "blob"), [data[:1000], data[1000:]], len(data)) == len(data)
    assert (home / "blob").read_bytes() == data
    stat, chunks = channel.read_file(str(home / "blob"))
    assert stat.size == len(data) and b"".join(chunks) == data


def test_a_file_that_shrinks_while_it_is_read_is_an_error_not_padding(workspace: tuple[HelperChannel, Path]) -> None:
    channel, home = workspace
    (home / "big").write_bytes(b"x" * (8 << 20))  # more than the socket holds: the helper waits on us
    _, chunks = channel.read_file(str(home / "big"))
    first = next(chunks)
    os.truncate(home / "big", 1000)  # a rewrite under way
    with pytest.raises(FileError) as changed:
        b"".join([first, *chunks])
    assert changed.value.status_code == 409 and "read it again" in changed.value.detail


def test_files_that_say_they_are_empty_are_read_whole(workspace: tuple[HelperChannel, Path]) -> None:
    channel, _ = workspace
    stat, chunks = channel.read_file("/proc/self/status")
    content = b"".join(chunks)
    assert content.startswith(b"Name:") and stat.size == len(content)


def test_a_missing_working_directory_is_a_clear_400(workspace: tuple[HelperChannel, Path]) -> None:
    channel, home = workspace
    with pytest.raises(BadRequest, match="working directory does not exist"):
        run(channel, "true", str(home / "nowhere"))


def test_closing_the_stream_kills_the_command(workspace: tuple[HelperChannel, Path]) -> None:
    channel, home = workspace
    marker = home / "still-running"
    script = f"while true; do echo tick; touch {marker}; sleep 0.05; done"
    events = channel.exec_stream(ExecRequest(argv=["/bin/sh", "-c", script], cwd=str(home)))
    next(events)
    events.close()
    time.sleep(0.5)
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists()  # nothing touches it any more


def test_a_socket_that_leads_to_another_workspace_is_refused(helper: str, tmp_path: Path) -> None:
    other = serve(helper, tmp_path / "b", "ws-b")
    try:
        # A workload in ws-a replaces its socket with a link to ws-b's.
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "control.sock").symlink_to(tmp_path / "b" / "control.sock")
        marker = tmp_path / "ran-in-b"
        with pytest.raises(ControlSocketError, match="not a socket"):
            ControlSocketTransport(tmp_path / "a" / "control.sock", "ws-a").call(
                Invocation(["run", "--", "touch", str(marker)])
            )

        class Fallback:
            def call(self, invocation: Invocation) -> Call:
                raise LookupError("fell back")

        linked = ControlSocketTransport(tmp_path / "a" / "control.sock", "ws-a")
        with pytest.raises(LookupError, match="fell back"):
            SocketFirst(linked, Fallback()).call(Invocation(["run", "--", "touch", str(marker)]))
        time.sleep(0.2)
        assert not marker.exists()  # nothing was sent to ws-b
    finally:
        other.terminate()
        other.wait()


def test_a_helper_that_is_not_this_workspaces_is_refused(helper: str, tmp_path: Path) -> None:
    stale = serve(helper, tmp_path / "a", "ws-b")  # say, left from another workspace
    try:
        with pytest.raises(ControlSocketError, match="not the helper of ws-a"):
            ControlSocketTransport(tmp_path / "a" / "control.sock", "ws-a").call(Invocation(["probe"]))
    finally:
        stale.terminate()
        stale.wait()


def test_no_socket_falls_back(tmp_path: Path) -> None:
    with pytest.raises(ControlSocketError):
        ControlSocketTransport(tmp_path / "control.sock", "ws-a").call(Invocation(["probe"]))


def test_a_process_deadline_and_a_helper_subcommand_under_the_process_table(
    helper: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What E2B's endpoint keeps in the workspace rather than in a replica: a command's deadline, kept by its
    supervisor, and a watch run as a background process by the helper's own binary."""
    monkeypatch.setenv("AGENTBOX_PROCS", str(tmp_path / "procs"))
    (tmp_path / "procs").mkdir()
    init = serve(helper, tmp_path / "run", "ws-a")
    try:
        table = HelperChannel(ControlSocketTransport(tmp_path / "run" / "control.sock", "ws-a")).processes()
        family = ProcessRequest(argv=["sh", "-c", "sleep 30 & sleep 30"], cwd=str(tmp_path), timeout=0.3)
        bounded = table.start(family)
        ended = list(table.output(bounded.pid, follow=True))[-1]
        assert isinstance(ended, ProcessEnded) and (ended.timed_out, ended.signal) == (True, "SIGKILL")
        assert table.get(bounded.pid).timed_out
        quick = table.start(ProcessRequest(argv=["true"], cwd=str(tmp_path), timeout=30))
        last = list(table.output(quick.pid, follow=True))[-1]
        assert isinstance(last, ProcessEnded) and (last.exit_code, last.timed_out) == (0, False)

        watched = tmp_path / "watched"
        watched.mkdir()
        pid = start_watch(table, str(watched), recursive=False)  # returns once the watch is in place
        (watched / "new.txt").write_text("x")
        seen: list[WatchEvent] = []
        deadline = time.monotonic() + 10
        while WatchEvent("create", str(watched / "new.txt")) not in seen:
            assert time.monotonic() < deadline, f"the watch saw {seen}"
            output = b"".join(e.data for e in table.output(pid, len(READY)) if isinstance(e, ProcessOutput))
            seen = events_after(output)[0]
            time.sleep(0.02)
        assert table.get(pid).command == ["watch", str(watched)]
        with pytest.raises(FileError):
            start_watch(table, str(tmp_path / "missing"), recursive=False)
        table.signal(pid, int(signal.SIGKILL))
    finally:
        init.terminate()
        init.wait()
