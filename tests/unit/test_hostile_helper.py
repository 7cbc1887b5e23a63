"""A helper that lies: a workload's own listener on the control socket, after a correct hello.

Each case is a fake helper on a real Unix socket (a thread that says the right hello, then
sends what no helper of ours sends), driven through the real transport and channel. Each
must end in a clear ProviderError, quickly, holding little memory: the host never gathers
what the helper announces, and never passes on more than it may.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentbox.errors import ProviderError
from agentbox.sandbox import channel as channel_module
from agentbox.sandbox import processes as processes_module
from agentbox.sandbox.channel import MAX_ENTRIES, HelperChannel, HelperMalformed
from agentbox.sandbox.control import ControlSocketTransport
from agentbox.sandbox.processes import HelperProcesses
from agentbox.sandbox.runtime import ExecRequest, FileStat, collect
from agentbox.workspaces import listening

WORKSPACE = "ws-hostile"
#: What one fake helper sends at most before it gives up: an old host that buffers everything
#: ends (failing these tests) rather than hanging or exhausting the machine.
BUDGET = 96 << 20
#: A call that holds nothing it was not asked for stays under this (tracemalloc, whole process).
SMALL = 4 << 20
#: Starts a fake helper that gives each call the answer made by its argument; the channel to it.
Start = Callable[[Callable[[], Iterator[bytes]]], HelperChannel]


def frame(kind: int, data: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack(">BL", kind, len(data) if size is None else size) + data


def stdout(data: bytes) -> bytes:
    return frame(1, data)


EXIT_0 = frame(3, struct.pack(">i", 0))


class FakeHelper:
    """Listens where the helper's socket is; to each call, the hello and then `answer`'s bytes."""

    def __init__(self, directory: Path, answer: Callable[[], Iterator[bytes]]) -> None:
        self.path = directory / "control.sock"
        self.answer = answer
        self.sent = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(8)
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                (length,) = struct.unpack(">L", _read(conn, 4))
                _read(conn, length)
                conn.sendall(f"AGX1 {WORKSPACE}\n".encode())
                for data in self.answer():
                    conn.sendall(data)
                    self.sent += len(data)
                    if self.sent > BUDGET:
                        return
            except OSError:  # the host hung up: what a hostile answer should get
                return

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self._listener.close()
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(10)
            assert not thread.is_alive(), "a call was still reading from the fake helper"


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ConnectionError("the host went away")
        data += more
    return data


def once(*parts: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter(parts)


def endless(first: bytes, again: bytes) -> Callable[[], Iterator[bytes]]:
    """`first`, then `again` until the host hangs up (or BUDGET is spent)."""

    def answer() -> Iterator[bytes]:
        yield first
        while True:
            yield again

    return answer


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Start]:
    helpers: list[FakeHelper] = []

    def start(answer: Callable[[], Iterator[bytes]]) -> HelperChannel:
        directory = tmp_path / f"run{len(helpers)}"
        directory.mkdir()
        helpers.append(FakeHelper(directory, answer))
        return HelperChannel(ControlSocketTransport(helpers[-1].path, WORKSPACE))

    yield start
    for helper in helpers:
        helper.close()


def contained(call: Callable[[], object], limit: int = SMALL) -> ProviderError:
    """Run `call`; it must fail with a ProviderError within a few seconds, holding under `limit` bytes."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ProviderError) as failure:
            call()
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert peak < limit, f"held {peak / 2**20:.1f} MiB"
    return failure.value


def malformed(call: Callable[[], object]) -> str:
    error = contained(call)
    assert isinstance(error, HelperMalformed) and error.status_code == 502
    assert "stop and start the workspace" in error.detail.lower()
    return error.detail


ZEROS = bytes(1 << 16)
HUGE = 0xFFFFFFFF  # a 4 GiB frame


def exec_all(channel: HelperChannel, limit: int = 10 << 20) -> object:
    request = ExecRequest(argv=["true"], output_limit=limit)
    return collect(channel.exec_stream(request), limit)


def read_all(channel: HelperChannel, path: str = "/w/f") -> bytes:
    _, chunks = channel.read_file(path)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "use",
    [
        lambda ch: ch.stat("/w"),
        read_all,
        exec_all,
        lambda ch: ch.connect(8080),
        lambda ch: list(ch.watch("/w", True)),
        lambda ch: HelperProcesses(ch.transport).list(),
        lambda ch: list(HelperProcesses(ch.transport).output(7)),
    ],
    ids=["stat", "read", "exec", "connect", "watch", "procs", "output"],
)
def test_an_announced_4_gib_frame_fails_the_call_at_once(
    hostile: Start, use: Callable[[HelperChannel], object]
) -> None:
    channel = hostile(endless(frame(1, size=HUGE), ZEROS))
    assert "4294967295 bytes" in malformed(lambda: use(channel))


@pytest.mark.parametrize("kind", [0, 5, 255])
def test_a_frame_of_no_known_kind_fails_the_call(hostile: Start, kind: int) -> None:
    channel = hostile(once(frame(kind, b"x"), EXIT_0))
    malformed(lambda: exec_all(channel))


def test_an_exit_frame_of_the_wrong_size_and_a_huge_refusal_fail_the_call(hostile: Start) -> None:
    malformed(lambda: exec_all(hostile(once(frame(3, b"\0" * 8)))))
    malformed(lambda: exec_all(hostile(endless(frame(4, size=HUGE), ZEROS))))


def test_a_header_line_that_never_ends(hostile: Start) -> None:
    line = stdout(b"F" * 65000)
    assert "a line longer than" in malformed(lambda: hostile(endless(b"", line)).stat("/w"))
    malformed(lambda: read_all(hostile(endless(b"", line))))
    malformed(lambda: hostile(endless(b"", line)).connect(80))
    malformed(lambda: HelperProcesses(hostile(endless(b"", line)).transport).list())
    malformed(lambda: list(HelperProcesses(hostile(endless(b"", line)).transport).output(7)))


def test_numbers_that_are_not_numbers(hostile: Start) -> None:
    malformed(lambda: hostile(once(stdout(b"F 12x 644\n"), EXIT_0)).stat("/w/f"))
    malformed(lambda: hostile(once(stdout(b"F -1 644\n"), EXIT_0)).stat("/w/f"))
    malformed(lambda: hostile(once(stdout(b"D\nf 1 999 0 name\0"), EXIT_0)).stat("/w"))
    malformed(lambda: hostile(once(stdout(b"OK lots\n"), EXIT_0)).write_file("/w/f", [b"x"], 1))
    malformed(lambda: HelperProcesses(hostile(once(stdout(b"P 1 x 0 1\n"), EXIT_0)).transport).list())
    malformed(lambda: list(HelperProcesses(hostile(once(stdout(b"S ten\n"), EXIT_0)).transport).output(7)))


def test_an_endless_listing_stops_at_its_bound_and_says_so(hostile: Start) -> None:
    records = b"".join(b"f 1 644 0 %07d\0" % i for i in range(4000))
    channel = hostile(endless(stdout(b"D\n"), stdout(records)))
    # A listing is answered whole, so it is held whole up to its bound (about 250 bytes an entry here).
    error = contained(lambda: channel.stat("/w"), limit=MAX_ENTRIES * 400)
    assert f"more than {MAX_ENTRIES} entries" in error.detail and "ls" in error.detail
    # One entry that never ends is the helper's fault, and holds next to nothing.
    assert "a directory entry longer" in malformed(
        lambda: hostile(endless(stdout(b"D\n"), stdout(b"f" * 65000))).stat("/w")
    )


def test_a_file_never_passes_on_more_or_fewer_bytes_than_announced(hostile: Start) -> None:
    passed: list[bytes] = []

    def read(channel: HelperChannel) -> None:
        _, chunks = channel.read_file("/w/f")
        for chunk in chunks:
            passed.append(chunk)

    assert "more of /w/f than the 10 bytes" in malformed(
        lambda: read(hostile(once(stdout(b"F 10 644\n0123456789ABCDEFGHIJ"), EXIT_0)))
    )
    assert sum(map(len, passed)) <= 10
    passed.clear()
    malformed(lambda: read(hostile(endless(stdout(b"F 10 644\n"), stdout(ZEROS)))))
    assert sum(map(len, passed)) <= 10
    assert "5 bytes of /w/f where it announced 10" in malformed(
        lambda: read(hostile(once(stdout(b"F 10 644\n01234"), EXIT_0)))
    )


def test_an_endless_watch_record(hostile: Start) -> None:
    channel = hostile(endless(stdout(b"W\0create /"), stdout(b"a" * 65000)))
    assert "a watch event longer" in malformed(lambda: list(channel.watch("/w", True)))


def test_exec_output_past_its_cap(hostile: Start) -> None:
    channel = hostile(endless(b"", stdout(ZEROS)))
    assert "more stdout than the 1048576 bytes" in malformed(lambda: exec_all(channel, limit=1 << 20))


def test_process_records_past_their_bounds(hostile: Start) -> None:
    huge_meta = stdout(b"P 1 4000000000 0 1\n")
    malformed(lambda: HelperProcesses(hostile(endless(huge_meta, stdout(ZEROS))).transport).list())
    record = stdout(b"S 0\n" + struct.pack(">BI", 1, HUGE))
    malformed(lambda: list(HelperProcesses(hostile(endless(record, stdout(ZEROS))).transport).output(7)))
    long_answer = stdout(b"OK " + b"1" * 65000)
    malformed(lambda: HelperProcesses(hostile(endless(b"", long_answer)).transport).signal(7, 15))


def test_a_long_stream_of_small_frames_is_read_in_linear_time(hostile: Start) -> None:
    """Every byte is copied a fixed number of times, however the helper cuts its answer."""
    piece = stdout(bytes(256))

    def read(size: int) -> float:
        answer = stdout(b"F %d 644\n" % size) + piece * (size // 256)
        channel = hostile(once(answer, EXIT_0))
        started = time.monotonic()
        _, chunks = channel.read_file("/w/f")
        assert sum(map(len, chunks)) == size
        return time.monotonic() - started

    small, large = read(16 << 20), read(64 << 20)
    assert large < 6 * small + 0.5, f"16 MiB in {small:.2f} s, 64 MiB in {large:.2f} s"
    assert large < 15, f"64 MiB of small frames took {large:.1f} s"


def test_process_records_the_workload_damaged_are_skipped_or_cleaned(hostile: Start) -> None:
    """The genuine helper passes on a process's meta file as it finds it; the workload can write it."""
    nested = b"[" * 100_000  # json's decoder gives up with a RecursionError
    tagged = b'{"command": ["x"], "tag": {"not": "a string"}}'
    table = b"".join(b"P %d %d 0 1\n%s" % (pid, len(meta), meta) for pid, meta in ((5, nested), (6, tagged)))
    (found,) = HelperProcesses(hostile(once(stdout(table), EXIT_0)).transport).list()
    assert (found.pid, found.tag, found.command) == (6, None, ["x"])


def test_a_socket_table_is_read_within_its_bound_and_garbage_in_it_is_skipped(hostile: Start) -> None:
    """GET /ports reads /proc/net/tcp whole: one announced at 4 GB is refused before a byte is held."""
    channel = hostile(endless(stdout(b"F 4000000000 644\n"), stdout(ZEROS)))
    error = contained(lambda: listening.table_text("/proc/net/tcp", *_stat_size(channel.read_file("/proc/net/tcp"))))
    assert "stop and start the workspace" in error.detail.lower()
    table = "sl local rem st\n 0: 0100007F:1F90 00000000:0000 0A\n 1: 0100007F:ZZZZ 00000000:0000 0A\n"
    assert listening.listening_ports(table) == {8080}


def _stat_size(found: tuple[FileStat, Iterator[bytes]]) -> tuple[int, Iterator[bytes]]:
    return found[0].size, found[1]


def test_a_helper_that_goes_silent_fails_the_call_instead_of_holding_it(
    hostile: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hello, then half an answer, then nothing: a call that would otherwise hold its thread for ever.
    monkeypatch.setattr(channel_module, "IDLE_SECONDS", 0.5)
    monkeypatch.setattr(processes_module, "IDLE_SECONDS", 0.5)

    def silent_after(first: bytes) -> Callable[[], Iterator[bytes]]:
        def answer() -> Iterator[bytes]:
            yield stdout(first)
            time.sleep(3)

        return answer

    assert "nothing for 0.5 s" in malformed(lambda: read_all(hostile(silent_after(b"F 10 644\n"))))
    procs = HelperProcesses(hostile(silent_after(b"P ")).transport)
    assert "nothing for 0.5 s" in malformed(procs.list)
