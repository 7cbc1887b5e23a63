"""The search tools' glob semantics, and their parsing of what grep and ripgrep print (run here, on the host)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox.errors import BadRequest, NotFound, Unprocessable
from agentbox.sandbox.runtime import ExecEvent, Exit, Output
from agentbox.workspaces.search import GrepQuery, compile_glob, grep, grepped


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.py", "a.py", True),
        ("*.py", "src/a.py", False),  # * stays within a directory
        ("**/*.py", "a.py", True),  # **/ may be no directory at all
        ("**/*.py", "src/deep/a.py", True),
        ("src/**", "src/deep/a.py", True),
        ("src/**/test_*.py", "src/test_a.py", True),
        ("src/**/test_*.py", "src/x/y/test_a.py", True),
        ("src/**/test_*.py", "lib/test_a.py", False),
        ("?.py", "ab.py", False),
        ("[ab].py", "b.py", True),
        ("[!ab].py", "b.py", False),
        ("*.{ts,tsx}", "app.tsx", True),
        ("*.{ts,tsx}", "app.js", False),
        ("{src,lib}/**/*.{c,h}", "lib/x/y.h", True),
        ("*.py", ".hidden.py", True),  # hidden files match like any other
        ("a+b(1).txt", "a+b(1).txt", True),  # regex characters are literal
        ("[.py", "[.py", True),  # an unclosed class is a literal [
    ],
)
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert any(regex.fullmatch(path) for regex in compile_glob(pattern)) is matches


def run_here(argv: list[str]) -> Iterator[ExecEvent]:
    """The command run on this host with a PATH that has grep but no rg, its output as a provider's exec
    gives it (the helper's exit 127 for a program that is not there)."""
    path = "/usr/bin:/bin"
    if shutil.which("rg", path=path):
        pytest.skip("rg is installed in /usr/bin on this host")
    program = shutil.which(argv[0], path=path)
    if program is None:
        yield Output("stderr", f"agentbox-exec: cannot run '{argv[0]}': No such file or directory\n".encode())
        yield Exit(127, False, 1)
        return
    done = subprocess.run([program, *argv[1:]], capture_output=True, check=False)
    yield Output("stdout", done.stdout)
    yield Output("stderr", done.stderr)
    yield Exit(done.returncode, False, 1)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a.py").write_text("import os\n\ndef main():\n    return 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("def not_python\n" + "x\n" * 3 + "def:again\n")
    (tmp_path / "blob.bin").write_bytes(b"def \0\xff binary")
    return tmp_path


def test_grep_fallback_gives_matches_and_context(tree: Path) -> None:
    query = GrepQuery(pattern=r"def \w+", path=str(tree), context=1)
    found = grep(query, run_here)
    assert found.engine == "grep" and not found.truncated
    lines = sorted((m.path.removeprefix(str(tree)), m.line_number, m.line, m.is_match) for m in found.matches)
    assert lines == [
        ("/a.py", 2, "", False),
        ("/a.py", 3, "def main():", True),
        ("/a.py", 4, "    return 1", False),
        ("/sub/b.txt", 1, "def not_python", True),
        ("/sub/b.txt", 2, "x", False),
    ]  # and nothing from the binary file


def test_grep_fallback_bounds_and_refusals(tree: Path) -> None:
    bounded = grep(GrepQuery(pattern="x", path=str(tree), limit=2), run_here)
    assert len(bounded.matches) == 2 and bounded.truncated
    with pytest.raises(NotFound):
        grep(GrepQuery(pattern="x", path=str(tree / "nowhere")), run_here)
    with pytest.raises(Unprocessable, match="parenthes"):
        grep(GrepQuery(pattern="(", path=str(tree)), run_here)


def test_an_image_without_either_engine_is_told_what_to_install() -> None:
    def nothing_installed(argv: list[str]) -> Iterator[ExecEvent]:
        yield Exit(127, False, 1)

    with pytest.raises(BadRequest, match="apt-get install ripgrep"):
        grep(GrepQuery(pattern="x", path="/w"), nothing_installed)


def test_long_lines_are_cut_and_a_timeout_is_a_truncated_answer() -> None:
    query = GrepQuery(pattern="x", path="/w")
    line = b"/w/f\x002:" + b"x" * 2000 + b"\n"
    found = grepped(query, [Output("stdout", line), Exit(124, True, 20_000)], "grep")
    assert found is not None
    assert found.truncated and len(found.matches[0].line) == 501 and found.matches[0].line.endswith("…")
