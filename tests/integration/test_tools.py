"""The file tools agents call, over real gVisor, runc and E2B workspaces."""

from __future__ import annotations

import pytest

from agentbox.client import APIError, Client
from agentbox.wire.workspaces import WorkspaceOut


def refused(call: object) -> APIError:
    with pytest.raises(APIError) as error:
        call()  # type: ignore[operator]
    return error.value


def test_read_write_and_edit_as_an_agent_uses_them(alice: Client, workspace: WorkspaceOut) -> None:
    path = "/workspace/new/dir/app.py"
    assert alice.write_tool(workspace.id, path, "x = 1\ny = 1\nprint(x + y)\n").size == 25  # parents made
    read = alice.read_tool(workspace.id, path, offset=2, limit=2)
    assert (read.content, read.total_lines, read.is_binary) == ("     2\ty = 1\n     3\tprint(x + y)\n", 3, False)
    owner = alice.exec(workspace.id, f'[ "$(stat -c %U {path})" = "$(id -un)" ] && echo mine').stdout
    assert owner == "mine\n"  # the workspace's user's, like everything its commands make

    alice.exec(workspace.id, f"chmod 755 {path}")
    assert alice.edit_tool(workspace.id, path, "x = 1", "x = 40") == 1
    assert alice.exec(workspace.id, f"python3 {path}; stat -c %a {path}").stdout == "41\n755\n"  # mode kept

    ambiguous = refused(lambda: alice.edit_tool(workspace.id, path, "= ", "== "))
    assert ambiguous.status_code == 422 and "2 times" in ambiguous.detail and "replace_all" in ambiguous.detail
    missing = refused(lambda: alice.edit_tool(workspace.id, path, "z = 3", "z = 4"))
    assert missing.status_code == 422 and "not found" in missing.detail
    assert alice.edit_tool(workspace.id, path, "= ", "= -", replace_all=True) == 2
    assert alice.exec(workspace.id, f"python3 {path}").stdout == "-41\n"


def test_read_tells_directories_binaries_and_missing_files_apart(alice: Client, workspace: WorkspaceOut) -> None:
    alice.exec(
        workspace.id,
        "mkdir -p /workspace/d/sub && touch /workspace/d/a.txt && head -c 4096 /dev/urandom > /workspace/d/blob",
    )
    directory = alice.read_tool(workspace.id, "/workspace/d")
    assert directory.is_directory and directory.content == "a.txt\nblob\nsub/\n"
    blob = alice.read_tool(workspace.id, "/workspace/d/blob")
    assert (blob.is_binary, blob.content, blob.size) == (True, "", 4096)
    assert refused(lambda: alice.read_tool(workspace.id, "/workspace/d/nothing")).status_code == 404
    assert refused(lambda: alice.read_tool(workspace.id, "relative/path")).status_code == 422
    binary_edit = refused(lambda: alice.edit_tool(workspace.id, "/workspace/d/blob", "a", "b"))
    assert binary_edit.status_code == 422


def test_glob_finds_files_newest_first_with_double_star(alice: Client, workspace: WorkspaceOut) -> None:
    alice.exec(
        workspace.id,
        "mkdir -p /workspace/g/src/pkg /workspace/g/.hidden && cd /workspace/g && "
        "touch -d '2020-01-01' src/old.py && touch -d '2021-01-01' src/pkg/mid.py && touch top.py src/notes.md "
        "&& touch .hidden/h.py && ln -s top.py link.py",
    )
    root = "/workspace/g"
    everywhere = alice.glob_tool(workspace.id, "**/*.py", root)
    assert everywhere.paths[-2:] == [f"{root}/src/pkg/mid.py", f"{root}/src/old.py"]  # newest first
    expected = ("top.py", "link.py", ".hidden/h.py", "src/old.py", "src/pkg/mid.py")
    assert set(everywhere.paths) == {f"{root}/{path}" for path in expected}
    assert not everywhere.truncated
    assert set(alice.glob_tool(workspace.id, "*.py", root).paths) == {f"{root}/top.py", f"{root}/link.py"}
    assert alice.glob_tool(workspace.id, "src/*.{py,md}", root).paths[0] == f"{root}/src/notes.md"
    assert len(alice.glob_tool(workspace.id, "src/*.{py,md}", root).paths) == 2
    bounded = alice.glob_tool(workspace.id, "**", root, limit=2)
    assert len(bounded.paths) == 2 and bounded.truncated
    assert refused(lambda: alice.glob_tool(workspace.id, "*", "/workspace/nowhere")).status_code == 404


def test_grep_gives_matches_with_context_and_stops_at_its_bound(alice: Client, workspace: WorkspaceOut) -> None:
    alice.write_tool(workspace.id, "/workspace/s/a.py", "import os\n\ndef main():\n    return os.getcwd()\n")
    alice.write_tool(workspace.id, "/workspace/s/b.txt", "MAIN street\n" + "main\n" * 50)
    alice.exec(workspace.id, "head -c 2000 /dev/urandom > /workspace/s/x.py; printf 'main\\0' >> /workspace/s/x.py")

    found = alice.grep_tool(workspace.id, r"def \w+\(", "/workspace/s", context=1)
    assert found.engine == "rg" and not found.truncated
    lines = [(m.path, m.line_number, m.line, m.is_match) for m in found.matches]
    assert lines == [
        ("/workspace/s/a.py", 2, "", False),
        ("/workspace/s/a.py", 3, "def main():", True),
        ("/workspace/s/a.py", 4, "    return os.getcwd()", False),
    ]
    only_text = alice.grep_tool(workspace.id, "street", "/workspace/s", include="*.txt", ignore_case=True)
    assert [(m.path, m.line) for m in only_text.matches] == [("/workspace/s/b.txt", "MAIN street")]
    bounded = alice.grep_tool(workspace.id, "^main$", "/workspace/s", limit=10)
    assert len(bounded.matches) == 10 and bounded.truncated  # and the binary blob is not among them
    assert all(m.path.endswith("b.txt") for m in bounded.matches)

    bad = refused(lambda: alice.grep_tool(workspace.id, "(unclosed", "/workspace/s"))
    assert bad.status_code == 422 and "unclosed group" in bad.detail
    assert refused(lambda: alice.grep_tool(workspace.id, "x", "/workspace/nowhere")).status_code == 404
    assert alice.grep_tool(workspace.id, "no such text anywhere", "/workspace/s").matches == []
