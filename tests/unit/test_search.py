"""The search tools' glob semantics, and their parsing of what grep and ripgrep print (run here, on the host)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agentbox.errors import NotFound, Unprocessable
from agentbox.providers.base import ExecEvent, Exit, Output
from agentbox.search import GrepQuery, compile_glob, grep_command, grepped


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


def run_here(argv: list[str], without_rg: bool) -> list[ExecEvent]:
    """The command run on this host, its output as a provider's exec would give it."""
    env = dict(os.environ)
    if without_rg:  # a PATH with grep and sh but no rg
        env["PATH"] = "/usr/bin:/bin"
        if shutil.which("rg", path=env["PATH"]):
            pytest.skip("rg is installed in /usr/bin on this host")
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    return [Output("stdout", done.stdout), Output("stderr", done.stderr), Exit(done.returncode, False, 1)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a.py").write_text("import os\n\ndef main():\n    return 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("def not_python\n" + "x\n" * 3 + "def:again\n")
    (tmp_path / "blob.bin").write_bytes(b"def \0\xff binary")
    return tmp_path


def test_grep_fallback_gives_matches_and_context(tree: Path) -> None:
    query = GrepQuery(pattern=r"def \w+", path=str(tree), context=1)
    found = grepped(query, run_here(grep_command(query), without_rg=True))
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
    query = GrepQuery(pattern="x", path=str(tree), limit=2)
    bounded = grepped(query, run_here(grep_command(query), without_rg=True))
    assert len(bounded.matches) == 2 and bounded.truncated
    missing = GrepQuery(pattern="x", path=str(tree / "nowhere"))
    with pytest.raises(NotFound):
        grepped(missing, run_here(grep_command(missing), without_rg=True))
    bad = GrepQuery(pattern="(", path=str(tree))
    with pytest.raises(Unprocessable, match="parenthes"):
        grepped(bad, run_here(grep_command(bad), without_rg=True))


def test_long_lines_are_cut_and_a_timeout_is_a_truncated_answer() -> None:
    query = GrepQuery(pattern="x", path="/w")
    line = b"/w/f\x002:" + b"x" * 2000 + b"\n"
    found = grepped(query, [Output("stdout", b"grep\n" + line), Exit(124, True, 20_000)])
    assert found.truncated and len(found.matches[0].line) == 501 and found.matches[0].line.endswith("…")
