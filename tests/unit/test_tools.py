"""The file tools' logic: numbered lines, binary files told apart, edits that never guess."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbox.errors import Unprocessable
from agentbox.sandbox.runtime import DirEntry
from agentbox.workspaces.tools import is_binary, listing, numbered, replaced


def test_lines_are_numbered_from_the_offset_asked_for() -> None:
    read = numbered(b"one\ntwo\nthree\nfour\n", offset=2, limit=2)
    assert read.content == "     2\ttwo\n     3\tthree\n"
    assert (read.total_lines, read.size, read.is_binary) == (4, 19, False)
    assert numbered(b"", offset=1).content == "" and numbered(b"only", offset=5).content == ""


def test_a_binary_file_says_so_instead_of_giving_bytes() -> None:
    assert numbered(b"\x7fELF\x02\x01\x00\x00").is_binary
    assert numbered(b"\xff\xfe\xfa not utf-8 at all").content == ""
    assert not is_binary("é".encode() * 4096 + "é".encode()[:1])  # a character cut by the sniff is text


def test_a_directory_is_its_sorted_entries() -> None:
    entries = [DirEntry("b.txt", "file", 1, 0o644, 0), DirEntry("a", "dir", 0, 0o755, 0)]
    assert listing(entries).content == "a/\nb.txt\n" and listing(entries).is_directory


def test_an_edit_refuses_a_missing_or_ambiguous_string() -> None:
    assert replaced("x = 1\ny = 1\n", "x = 1", "x = 2", replace_all=False) == ("x = 2\ny = 1\n", 1)
    with pytest.raises(Unprocessable, match="not found"):
        replaced("abc", "zzz", "y", replace_all=False)
    with pytest.raises(Unprocessable, match="2 times"):
        replaced("= 1\n= 1\n", "= 1", "= 2", replace_all=False)
    assert replaced("= 1\n= 1\n", "= 1", "= 2", replace_all=True) == ("= 2\n= 2\n", 2)


@given(st.text(min_size=1), st.text(), st.text())
def test_an_edit_changes_exactly_what_was_asked(old: str, new: str, around: str) -> None:
    text, count = replaced(around + old + around, old, new, replace_all=True)
    assert count == (around + old + around).count(old)
    assert text == (around + old + around).replace(old, new)
