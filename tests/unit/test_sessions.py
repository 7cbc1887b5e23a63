"""How a session's run finds its end in the shell's output, whatever pieces the output arrives in."""

from __future__ import annotations

import subprocess

import pytest

from agentbox.sessions import MarkedOutput, ansi_c


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_the_marker_is_found_across_pieces_and_later_output_is_nobodys(piece: int) -> None:
    stream = b"partial line" + b"\x1eagentbox-00ff 7\n" + b"a background job's output\n"
    out = MarkedOutput("00ff", limit=100)
    for start in range(0, len(stream), piece):
        out.feed(stream[start : start + piece])
    assert (out.done, out.status, out.text(), out.truncated) == (True, 7, "partial line", False)


def test_another_runs_marker_is_output_and_the_limit_holds() -> None:
    out = MarkedOutput("00ff", limit=10)
    out.feed(b"\x1eagentbox-aaaa 0\n" + b"x" * 40)
    assert not out.done
    out.feed(b"\x1eagentbox-00ff\n")  # stderr's marker has no status
    assert (out.done, out.status, out.truncated, len(out.text())) == (True, None, True, 10)


@pytest.mark.parametrize(
    "text", ["plain", 'it\'s \\ "quoted" $HOME `x` $(y)', "two\nlines\tand\x1bcontrol\x7f", "ünïcødé ✓", "\\x41"]
)
def test_a_command_reaches_bash_exactly_as_written(text: str) -> None:
    shown = subprocess.run(["bash", "-c", f"printf %s {ansi_c(text)}"], capture_output=True, check=True).stdout
    assert shown.decode() == text
