"""Tests for the in-container helper ``agentbox-exec`` (src/agentbox/sandbox/*.c, main.c lists them).

The helper is a plain static Linux binary, so it is compiled into a temp dir and run
directly on the host; no Docker needed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentbox.sandbox import build

if not (shutil.which("cc") or shutil.which("gcc")):
    pytest.skip("no C compiler (cc) on PATH; cannot build agentbox-exec", allow_module_level=True)


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build(tmp_path_factory.mktemp("helper") / "agentbox-exec", strict=True))


def run(
    helper: str, *args: str, input: bytes | None = None, timeout: float = 5.0
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [helper, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie.

    Zombies count as dead: the host's PID 1 may not reap orphans (in a container
    `agentbox-exec init` does)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def wait_until(cond: Callable[[], bool], timeout: float = 1.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def kill_later() -> Iterator[list[int]]:
    """PIDs appended here are SIGKILLed at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---- run -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + 9), ("kill -TERM $$", 128 + 15)],
)
def test_run_exit_codes(helper: str, script: str, code: int) -> None:
    assert run(helper, "run", "--", "sh", "-c", script).returncode == code


def test_run_separates_stdout_and_stderr(helper: str) -> None:
    res = run(helper, "run", "--", "sh", "-c", "echo out; echo err >&2; echo out2")
    assert (res.returncode, res.stdout, res.stderr) == (0, b"out\nout2\n", b"err\n")


def test_run_preserves_unicode_and_binary(helper: str) -> None:
    payload = bytes(range(256)) * 4 + "héllo ✓ 日本\n".encode()
    code = f"import sys; sys.stdout.buffer.write({payload!r}); sys.stderr.buffer.write(b'\\x00\\xff')"
    res = run(helper, "run", "--", sys.executable, "-c", code)
    assert (res.returncode, res.stdout, res.stderr) == (0, payload, b"\x00\xff")


def test_run_max_bytes_truncates_but_child_finishes(helper: str) -> None:
    code = "import sys; sys.stdout.buffer.write(b'o' * 2**20); sys.stderr.buffer.write(b'e' * 2**20)"
    start = time.monotonic()
    res = run(helper, "run", "-m", "1000", "--", sys.executable, "-c", code)
    # Exit 0 means the child got its whole MiB out on both streams: it never blocked.
    assert res.returncode == 0
    assert res.stdout == b"o" * 1001
    assert res.stderr == b"e" * 1001
    assert time.monotonic() - start < 3


def test_run_timeout_kills_and_returns_124(helper: str) -> None:
    start = time.monotonic()
    res = run(helper, "run", "-t", "0.3", "--", "sleep", "30")
    assert res.returncode == 124
    assert 0.25 < time.monotonic() - start < 2


def test_run_with_timeout_exits_normally_before_deadline(helper: str) -> None:
    start = time.monotonic()
    res = run(helper, "run", "-t", "5", "--", "sh", "-c", "echo hi; exit 7")
    assert (res.returncode, res.stdout) == (7, b"hi\n")
    assert time.monotonic() - start < 1


def test_run_timeout_kills_whole_group_and_streams_output(helper: str) -> None:
    script = "echo $$; echo before; echo err-before >&2; sleep 30 & sleep 30 & wait"
    proc = subprocess.Popen(
        [helper, "run", "-t", "0.5", "--", "sh", "-c", script],
        bufsize=0,  # unbuffered: readline() must not swallow what communicate() reads later
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    start = time.monotonic()
    pgid = int(proc.stdout.readline())
    # Output is forwarded as it arrives, long before the command ends.
    assert time.monotonic() - start < 0.4
    rest, err = proc.communicate(timeout=3)
    assert proc.returncode == 124
    assert rest == b"before\n"
    assert err == b"err-before\n"
    assert wait_until(lambda: not group_alive(pgid)), "processes of the group survived the timeout"


def test_run_background_process_does_not_block(helper: str, kill_later: list[int]) -> None:
    start = time.monotonic()
    res = run(helper, "run", "--", "sh", "-c", "sleep 5 & echo $!; echo started")
    elapsed = time.monotonic() - start
    pid_line, started = res.stdout.splitlines()
    kill_later.append(int(pid_line))
    assert res.returncode == 0
    assert started == b"started"
    assert elapsed < 0.5
    assert alive(int(pid_line))


def test_run_background_writer_keeps_running_after_helper_exits(
    helper: str, tmp_path: Path, kill_later: list[int]
) -> None:
    # The background job writes after the helper has exited; without the drainer it would
    # die of SIGPIPE before writing the marker.
    marker = tmp_path / "marker"
    script = f"(sleep 0.2; echo late; echo late >&2; echo done > {marker}) & echo $!"
    res = run(helper, "run", "--", "sh", "-c", script)
    kill_later.append(int(res.stdout))
    assert res.returncode == 0
    assert wait_until(marker.exists, 2.0)
    assert marker.read_text() == "done\n"


def test_run_nonstop_background_writer_does_not_hold_helper(helper: str, kill_later: list[int]) -> None:
    start = time.monotonic()
    res = run(helper, "run", "-m", "100", "--", "sh", "-c", "yes >&2 & echo $!")
    kill_later.append(int(res.stdout))
    assert res.returncode == 0
    assert time.monotonic() - start < 1
    assert alive(int(res.stdout))


def test_run_stdin_is_dev_null_without_i(helper: str) -> None:
    # The helper's stdin is a pipe nobody closes: if `cat` read it, it would hang.
    proc = subprocess.Popen(
        [helper, "run", "--", "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.wait(timeout=2) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == b""
    finally:
        proc.kill()
        proc.communicate()


def test_run_stdin_passed_with_i(helper: str) -> None:
    res = run(helper, "run", "-i", "--", "cat", input=b"hello\x00world")
    assert (res.returncode, res.stdout) == (0, b"hello\x00world")


def test_run_exec_failure_enoent(helper: str) -> None:
    res = run(helper, "run", "--", "/nonexistent/prog")
    assert res.returncode == 127
    assert res.stdout == b""
    assert res.stderr == b"agentbox-exec: cannot run '/nonexistent/prog': No such file or directory\n"


def test_run_exec_failure_not_executable(helper: str, tmp_path: Path) -> None:
    script = tmp_path / "noexec"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    res = run(helper, "run", "--", str(script))
    assert res.returncode == 126
    assert res.stderr == f"agentbox-exec: cannot run '{script}': Permission denied\n".encode()


def test_run_epipe_kills_child(helper: str) -> None:
    proc = subprocess.Popen(
        [helper, "run", "--", "sh", "-c", "echo $$; exec yes"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.stdout.close()
    assert proc.wait(timeout=2) == 141
    assert wait_until(lambda: not alive(pid)), "`yes` still running after EPIPE"


def test_run_forwards_sigterm_to_group(helper: str) -> None:
    proc = subprocess.Popen(
        [helper, "run", "--", "sh", "-c", "echo $$; sleep 30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    pgid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=2) == 128 + signal.SIGTERM
    assert wait_until(lambda: not group_alive(pgid))
    proc.stdout.close()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["run"],
        ["run", "--"],
        ["run", "-x", "--", "true"],
        ["run", "-t", "abc", "--", "true"],
        ["run", "-m", "-1", "--", "true"],
        ["get"],
        ["put"],
        ["put", "f", "-p", "999"],
        ["init", "extra"],
    ],
)
def test_usage_errors_exit_2(helper: str, args: list[str]) -> None:
    res = run(helper, *args)
    assert res.returncode == 2
    assert b"usage" in res.stderr


# ---- get -------------------------------------------------------------------------------------


def test_get_file_binary_exact(helper: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 300 + b"\n\x00tail"
    f = tmp_path / "blob"
    f.write_bytes(data)
    f.chmod(0o640)
    res = run(helper, "get", str(f))
    assert res.returncode == 0
    assert res.stdout == f"F {len(data)} 640\n".encode() + data


def test_get_empty_file_and_symlink_followed(helper: str, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "empty").chmod(0o755)
    (tmp_path / "link").symlink_to("empty")
    assert run(helper, "get", str(tmp_path / "link")).stdout == b"F 0 755\n"


def parse_listing(out: bytes) -> dict[bytes, tuple[str, int, int, int]]:
    assert out.startswith(b"D\n")
    body = out[2:]
    assert body == b"" or body.endswith(b"\0")
    entries: dict[bytes, tuple[str, int, int, int]] = {}
    names = []
    for rec in body.split(b"\0")[:-1]:
        t, size, mode, mtime, name = rec.split(b" ", 4)
        entries[name] = (t.decode(), int(size), int(mode, 8), int(mtime))
        names.append(name)
    assert names == sorted(names), "records must be sorted by name"
    return entries


def test_get_directory_listing(helper: str, tmp_path: Path) -> None:
    (tmp_path / "a file").write_bytes(b"12345")
    (tmp_path / "a file").chmod(0o600)
    (tmp_path / "new\nline").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub").chmod(0o750)
    (tmp_path / "link").symlink_to("sub")
    os.mkfifo(tmp_path / "fifo")
    os.utime(tmp_path / "a file", (1_600_000_000, 1_600_000_000))

    res = run(helper, "get", str(tmp_path))
    assert res.returncode == 0
    entries = parse_listing(res.stdout)
    assert set(entries) == {b"a file", b"new\nline", b"sub", b"link", b"fifo"}
    assert entries[b"a file"] == ("f", 5, 0o600, 1_600_000_000)
    assert entries[b"new\nline"][:2] == ("f", 0)
    assert entries[b"sub"][0] == "d" and entries[b"sub"][2] == 0o750
    assert entries[b"link"][0] == "l"
    assert entries[b"link"][1] == len("sub")
    assert entries[b"fifo"][0] == "o"


def test_get_empty_directory(helper: str, tmp_path: Path) -> None:
    assert run(helper, "get", str(tmp_path)).stdout == b"D\n"


def test_get_errors(helper: str, tmp_path: Path) -> None:
    res = run(helper, "get", str(tmp_path / "missing"))
    assert (res.returncode, res.stdout) == (1, b"E ENOENT No such file or directory\n")
    (tmp_path / "file").write_text("x")
    res = run(helper, "get", str(tmp_path / "file" / "below"))
    assert (res.returncode, res.stdout) == (1, b"E ENOTDIR Not a directory\n")


def test_get_fifo_refused_without_blocking(helper: str, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    res = run(helper, "get", str(tmp_path / "fifo"), timeout=2)
    assert (res.returncode, res.stdout) == (1, b"E EINVAL not a regular file or directory\n")


# ---- put / mkdir -----------------------------------------------------------------------------


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".agentbox-put.")]


def test_put_round_trip_creates_parents(helper: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    target = tmp_path / "a" / "b c" / "file.bin"
    res = run(helper, "put", str(target), input=data)
    assert (res.returncode, res.stdout) == (0, f"OK {len(data)}\n".encode())
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) & 0o755 == 0o755
    got = run(helper, "get", str(target))
    assert got.stdout == f"F {len(data)} 644\n".encode() + data
    assert leftovers(tmp_path) == []


def test_put_mode_and_overwrite(helper: str, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    res = run(helper, "put", str(target), "-p", "0600", input=b"new")
    assert (res.returncode, res.stdout) == (0, b"OK 3\n")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    res = run(helper, "put", str(target), "-p", "755", input=b"")
    assert (res.stdout, target.read_bytes()) == (b"OK 0\n", b"")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert leftovers(tmp_path) == []


def test_put_with_size_commits_only_a_complete_upload(helper: str, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"previous")
    short = run(helper, "put", str(target), "-s", "10", input=b"12345")
    assert short.returncode == 1 and short.stdout.startswith(b"E EIO upload incomplete")
    assert target.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []
    complete = run(helper, "put", str(target), "-s", "5", input=b"12345")
    assert (complete.returncode, complete.stdout, target.read_bytes()) == (0, b"OK 5\n", b"12345")


def test_put_existing_directory_is_eisdir(helper: str, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    res = run(helper, "put", str(tmp_path / "d"), input=b"x")
    assert res.returncode == 1
    assert res.stdout.startswith(b"E EISDIR ")
    assert leftovers(tmp_path) == []


def test_put_under_a_file_is_enotdir(helper: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    res = run(helper, "put", str(tmp_path / "file" / "sub" / "x"), input=b"data")
    assert res.returncode == 1
    assert res.stdout.startswith(b"E ENOTDIR ")
    assert leftovers(tmp_path) == []


def test_put_write_error_removes_temp_file(helper: str, tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes write() fail half-way (EFBIG) after the temp file exists.
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    target = tmp_path / "big"
    res = subprocess.run(
        [helper, "put", str(target)], input=b"x" * 100_000, capture_output=True, preexec_fn=limit, timeout=5
    )
    assert res.returncode == 1
    assert res.stdout.startswith(b"E EFBIG ")
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_put_enospc(helper: str, tmp_path: Path) -> None:
    """Writes into a 64 KiB tmpfs in a private mount namespace (needs root + unshare)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {mnt} || exit 99; "
        f"head -c 1000000 /dev/zero | {helper} put {mnt}/sub/f; echo rc=$?; ls -A {mnt}/sub"
    )
    res = subprocess.run([unshare, "--mount", "sh", "-c", script], capture_output=True, timeout=5)
    if res.returncode == 99 or b"rc=" not in res.stdout:
        pytest.skip(f"cannot mount tmpfs here: {res.stderr.decode(errors='replace')}")
    assert res.stdout.startswith(b"E ENOSPC ")
    # `ls -A` of the directory prints nothing: no temp file was left behind.
    assert res.stdout.endswith(b"rc=1\n")


def test_mkdir(helper: str, tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z"
    assert run(helper, "mkdir", str(target)).stdout == b"OK\n"
    assert target.is_dir()
    res = run(helper, "mkdir", str(target))
    assert (res.returncode, res.stdout) == (0, b"OK\n")
    (tmp_path / "file").write_text("x")
    res = run(helper, "mkdir", str(tmp_path / "file"))
    assert (res.returncode, res.stdout) == (1, b"E EEXIST File exists\n")
    res = run(helper, "mkdir", str(tmp_path / "file" / "sub"))
    assert (res.returncode, res.stdout) == (1, b"E ENOTDIR Not a directory\n")


# ---- init / probe ----------------------------------------------------------------------------


def init_ready(pid: int, helper: str) -> bool:
    """The helper has been exec'd and sleeps; its only blocking call is sigwaitinfo(),
    which it enters after blocking SIGTERM/SIGINT, so signals are now safe to send."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    fields = proc_stat(pid)
    return exe == os.path.realpath(helper) and fields is not None and fields[0] == "S"


def test_init_reaps_children_and_exits_on_sigterm(helper: str) -> None:
    def give_init_a_child() -> None:
        # Runs in the forked child just before exec: this grandchild becomes a child of
        # `agentbox-exec init` and exits shortly after, so init has to reap it.
        if os.fork() == 0:
            os.closerange(3, 65536)  # don't hold Popen's exec-status pipe open
            time.sleep(0.2)
            os._exit(0)

    proc = subprocess.Popen([helper, "init"], preexec_fn=give_init_a_child)
    try:
        assert wait_until(lambda: init_ready(proc.pid, helper))
        kids = [
            int(e)
            for e in os.listdir("/proc")
            if e.isdigit() and (f := proc_stat(int(e))) is not None and int(f[1]) == proc.pid
        ]
        assert len(kids) == 1
        # Reaped: the /proc entry disappears entirely (a zombie would keep it).
        assert wait_until(lambda: proc_stat(kids[0]) is None, 2.0), "init did not reap its child"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=1) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 1
    finally:
        proc.kill()
        proc.wait()


def test_init_exits_on_sigint(helper: str) -> None:
    proc = subprocess.Popen([helper, "init"])
    try:
        assert wait_until(lambda: init_ready(proc.pid, helper))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=1) == 128 + signal.SIGINT
    finally:
        proc.kill()
        proc.wait()


def test_probe(helper: str) -> None:
    res = run(helper, "probe")
    assert res.returncode == 0
    assert res.stdout == f"agentbox-exec ok\n{os.uname().release}\n".encode()
