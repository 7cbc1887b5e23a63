"""Pure logic of background processes and watching: output lines and offsets, the helper's answers parsed."""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Iterator

from hypothesis import given
from hypothesis import strategies as st

from agentbox.api.commands import exec_json
from agentbox.api.processes import output_lines
from agentbox.sandbox.channel import Invocation, _records, watch_events
from agentbox.sandbox.process_table import OutputDropped, ProcessEnded, ProcessOutput
from agentbox.sandbox.processes import HelperProcesses, _parse_table
from agentbox.sandbox.runtime import ExecResult
from agentbox.wire.commands import ExecOut


@given(
    st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(min_size=1, max_size=40)), min_size=1),
    st.integers(min_value=1, max_value=5),
)
def test_output_lines_resume_exactly_and_never_split_a_character(pieces: list[tuple[str, str]], cut: int) -> None:
    events, offset = [], 0
    for stream, text in pieces:  # each piece cut into chunks of `cut` bytes, as records may be
        data = text.encode()
        for start in range(0, len(data), cut):
            events.append(ProcessOutput(stream, offset, data[start : start + cut]))  # type: ignore[arg-type]
            offset += len(data[start : start + cut])
    lines = [json.loads(line) for line in output_lines(iter(events))]
    assert "".join(line["data"] for line in lines) == "".join(text for _, text in pieces)
    assert lines[0]["offset"] == 0 and lines[-1]["next_offset"] == offset
    for before, after in itertools.pairwise(lines):
        assert after["offset"] == before["next_offset"]  # resuming at any line's next_offset loses nothing
    assert all("\ufffd" not in line["data"] for line in lines)


def test_output_lines_say_what_was_dropped_and_end_with_the_exit() -> None:
    events = [OutputDropped(0, 100), ProcessOutput("pty", 100, b"hi"), ProcessEnded(None, "SIGKILL", None)]
    lines = [json.loads(line) for line in output_lines(iter(events))]
    assert lines == [
        {"dropped": True, "offset": 0, "resumed_at": 100},
        {"stream": "pty", "offset": 100, "next_offset": 102, "data": "hi"},
        {"exit_code": None, "signal": "SIGKILL", "ended_at": None, "timed_out": False},
    ]


def test_exec_json_is_the_exec_answer_piece_by_piece() -> None:
    result = ExecResult(0, 'a\0b"é' * 50000, "", 12, False, True, False, None)
    answer = ExecOut.model_validate_json(b"".join(exec_json(result)))
    assert answer == ExecOut(**vars(result))


def test_the_process_table_skips_records_the_workload_damaged() -> None:
    good = json.dumps({"command": ["sleep", "9"], "cwd": "/w", "started_at": "2026-11-28T12:00:00+00:00"}).encode()
    ended = b"-1 9 1764331200000000000 stopped\n"
    table = b"P 7 %d %d 0\n" % (len(good), len(ended)) + good + ended + b"P 8 9 0 1\n" + b"{broken!!" + b"P 9 2 0 0\n{}"
    found = _parse_table(table)
    assert [p.pid for p in found] == [7]
    assert (found[0].status, found[0].signal, found[0].exit_code) == ("exited", "SIGKILL", None)


def test_an_exit_record_the_workload_overwrote_still_says_it_ended() -> None:
    meta = json.dumps({"command": ["x"]}).encode()
    (found,) = _parse_table(b"P 5 %d 9 0\n" % len(meta) + meta + b"garbage!\n")
    assert (found.status, found.exit_code, found.ended_at) == ("exited", None, None)


def test_a_process_whose_supervisor_vanished_is_reported_ended() -> None:
    meta = json.dumps({"command": ["x"], "started_at": None}).encode()
    (found,) = _parse_table(b"P 5 %d 0 0\n" % len(meta) + meta)
    assert found.status == "exited" and found.exit_code is None


class _Answer:
    """A helper call that answers `stdout` (the transport's contract, without a sandbox)."""

    def __init__(self, stdout: bytes) -> None:
        self.stdout = stdout
        self.invocations: list[Invocation] = []

    def call(self, invocation: Invocation) -> _Answer:
        self.invocations.append(invocation)
        return self

    def send(self, chunks: Iterable[bytes]) -> int:
        return sum(len(c) for c in chunks)

    def frames(self) -> Iterator[tuple[int, bytes]]:
        for start in range(0, len(self.stdout), 3):  # in awkward pieces
            yield 1, self.stdout[start : start + 3]

    def exit_code(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_output_records_are_read_from_where_the_helper_started() -> None:
    record = struct.Struct(">BI")
    answer = b"S 10\n" + record.pack(1, 3) + b"abc" + record.pack(9, 0) + record.pack(2, 2) + b"de"
    answer += record.pack(8, 2) + b"40" + record.pack(1, 1) + b"f"  # fell behind a rotation: on from 40
    ended = b"0 0 1764331200000000000\n"
    answer += record.pack(0, len(ended)) + ended
    helper = _Answer(answer)
    events = list(HelperProcesses(helper).output(4, offset=3))
    assert helper.invocations[0].argv == ["output", "4", "3"]
    assert events[0] == OutputDropped(3, 10)
    # The keep-alive between them is a None: the caller's chance to see that its client left.
    assert events[1:4] == [ProcessOutput("stdout", 10, b"abc"), None, ProcessOutput("stderr", 13, b"de")]
    assert events[4:6] == [OutputDropped(15, 40), ProcessOutput("stdout", 40, b"f")]
    assert isinstance(events[6], ProcessEnded) and events[6].exit_code == 0


def test_watch_records_become_events() -> None:
    chunks = [b"create /w/a\0wr", b"ite /w/a\0\0remove /w/a b\nc\0bogus x\0"]
    events = list(watch_events(_records(iter(chunks))))
    assert [(e.type, e.path) if e else None for e in events] == [
        ("create", "/w/a"),
        ("write", "/w/a"),
        None,  # the helper's keep-alive
        ("remove", "/w/a b\nc"),
    ]


def test_a_follower_whose_sandbox_went_away_is_told_so_with_where_to_resume() -> None:
    record = struct.Struct(">BI")
    cut_off = b"S 0\n" + record.pack(1, 5) + b"hello"  # and then the connection ends: no exit record
    assert list(HelperProcesses(_Answer(cut_off)).output(4)) == [ProcessOutput("stdout", 0, b"hello")]
    lines = [json.loads(line) for line in output_lines(HelperProcesses(_Answer(cut_off)).output(4, follow=True))]
    assert lines[0]["data"] == "hello"
    assert "went away" in lines[-1]["error"] and "offset 5" in lines[-1]["error"]
