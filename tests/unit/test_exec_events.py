from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from agentbox.api.commands import ndjson_lines
from agentbox.sandbox.runtime import Exit, Output, collect, signal_of


def test_collect_caps_each_stream_and_flags_it() -> None:
    events = [Output("stdout", b"a" * 6), Output("stderr", b"e"), Output("stdout", b"b" * 6), Exit(0, False, 5)]
    result = collect(events, limit=10)
    assert result.stdout == "a" * 6 + "b" * 4 and result.stdout_truncated
    assert result.stderr == "e" and not result.stderr_truncated


def test_collect_exactly_at_the_limit_is_not_truncated() -> None:
    result = collect([Output("stdout", b"x" * 10), Exit(0, False, 1)], limit=10)
    assert result.stdout == "x" * 10 and not result.stdout_truncated


@given(st.text(min_size=1, max_size=200), st.integers(min_value=1, max_value=7))
def test_ndjson_never_splits_a_character(text: str, piece: int) -> None:
    data = text.encode()
    events = [Output("stdout", data[i : i + piece]) for i in range(0, len(data), piece)] + [Exit(0, False, 1)]
    lines = [json.loads(line) for line in ndjson_lines(iter(events), limit=1 << 20)]
    assert "".join(line.get("data", "") for line in lines) == text
    assert lines[-1]["exit_code"] == 0


def test_ndjson_flags_truncation_in_the_exit_line() -> None:
    events = [Output("stderr", b"z" * 8), Exit(1, True, 1000)]
    lines = [json.loads(line) for line in ndjson_lines(iter(events), limit=5)]
    assert lines[0] == {"stream": "stderr", "data": "zzzzz"}
    assert lines[-1] == {
        "exit_code": 1,
        "timed_out": True,
        "duration_ms": 1000,
        "stdout_truncated": False,
        "stderr_truncated": True,
        "signal": None,
    }


def test_signal_names_follow_the_shell_convention() -> None:
    assert signal_of(137) == "SIGKILL"
    assert signal_of(143) == "SIGTERM"
    assert signal_of(0) is None and signal_of(1) is None and signal_of(128) is None
    assert signal_of(255) is None  # beyond any signal: a plain exit status
