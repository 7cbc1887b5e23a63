"""The file tools agents call, over real gVisor, runc and E2B workspaces."""

from __future__ import annotations

import pytest

from agentbox.client import APIError, Client
from agentbox.schemas import WorkspaceOut


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
