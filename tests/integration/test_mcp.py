"""MCP against a real server: the official SDK's client over streamable HTTP (/mcp) and over stdio
(`agentbox mcp`), an agent's whole round on a real workspace, and nothing left behind."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.types import CallToolResult

from agentbox.client import APIError
from agentbox.mcp.tools import TOOLS
from tests.mcp_sessions import over_stdio, over_streamable_http, text

from .conftest import KEYS, Server

pytestmark = pytest.mark.anyio

SCRIPT = "import sys\nprint('hello', sys.argv[1])\nsys.exit(3)\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def over_http(server: Server, key: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        over_streamable_http(http, f"{server.url}/mcp") as session,
    ):
        yield session


def over_agentbox_mcp(server: Server, key: str) -> AbstractAsyncContextManager[ClientSession]:
    return over_stdio(env={"AGENTBOX_URL": server.url, "AGENTBOX_API_KEY": key})


async def called(session: ClientSession, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """The tool's result, which must not be an error."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}: {text(result)}"
    return result


@pytest.mark.parametrize("transport", [over_http, over_agentbox_mcp], ids=["streamable-http", "stdio"])
async def test_an_agent_writes_runs_and_cleans_up_a_workspace_over_mcp(server: Server, transport: Any) -> None:
    label = f"mcp-{uuid.uuid4().hex[:8]}"
    try:
        async with transport(server, KEYS["alice"]) as session:
            assert {tool.name for tool in (await session.list_tools()).tools} == {tool.name for tool in TOOLS}
            created = await called(session, "create_workspace", {"labels": {"test": label}})
            assert created.structured_content is not None and created.structured_content["status"] == "running"
            ws = {"workspace_id": created.structured_content["id"]}
            path = "/workspace/app/hello.py"

            written = await called(session, "write_file", {**ws, "path": path, "content": SCRIPT})
            assert text(written) == f"wrote {len(SCRIPT)} bytes to {path}"  # its parent made
            await called(session, "edit_file", {**ws, "path": path, "old_string": "'hello'", "new_string": "'bye'"})
            missing = await session.call_tool(
                "edit_file", {**ws, "path": path, "old_string": "nowhere", "new_string": ""}
            )
            assert missing.is_error and "not found" in text(missing)

            ran = await called(session, "exec", {**ws, "command": ["python3", path, "mcp"]})
            assert ran.structured_content is not None
            assert (ran.structured_content["exit_code"], ran.structured_content["stdout"]) == (3, "bye mcp\n")
            assert text(ran) == "exit code 3\n--- stdout ---\nbye mcp"
            read = await called(session, "read_file", {**ws, "path": path, "offset": 2, "limit": 1})
            assert text(read) == "     2\tprint('bye', sys.argv[1])\n(lines 2-2 of 3: read on with offset=3)\n"

            started = await called(session, "start_process", {**ws, "command": f"python3 {path} background"})
            assert started.structured_content is not None
            process = {**ws, "pid": started.structured_content["pid"]}
            deadline = time.monotonic() + 60
            while True:
                output = await called(session, "process_output", process)
                assert output.structured_content is not None
                if output.structured_content["exit"] is not None:
                    break
                assert time.monotonic() < deadline, text(output)
                await anyio.sleep(0.25)
            assert text(output) == "bye background\n[exited with exit code 3]"
            await called(session, "kill_process", process)  # ended already: not an error

            opened = await called(session, "open_session", {**ws, "cwd": "/workspace/app"})
            assert opened.structured_content is not None
            in_session = {**ws, "session_id": opened.structured_content["session_id"]}
            await called(session, "run_in_session", {**in_session, "command": "export N=7"})
            shell = await called(session, "run_in_session", {**in_session, "command": 'echo "$N $(pwd)"'})
            assert text(shell) == "exit code 0\n--- stdout ---\n7 /workspace/app"
            await called(session, "close_session", in_session)
            assert text(await called(session, "glob", {**ws, "pattern": "**/*.py"})) == path
            assert text(await called(session, "grep", {**ws, "pattern": "bye"})).startswith(f"{path}:2:print")
            preview = await called(session, "preview_url", {**ws, "port": 8000})
            assert preview.structured_content is not None and "/preview/" in preview.structured_content["path_url"]

            deleted = await called(session, "delete_workspace", ws)
            assert text(deleted) == f"deleted workspace {ws['workspace_id']}"
            left = await called(session, "list_workspaces", {"label": [f"test={label}"]})
            assert left.structured_content == {"workspaces": []}
    finally:
        with server.client("alice") as alice:
            leftovers = alice.list(labels={"test": label})
            for workspace in leftovers:
                with contextlib.suppress(APIError):
                    alice.delete(workspace.id)
    assert leftovers == []


async def test_mcp_is_refused_without_a_valid_key_and_keeps_owners_apart(server: Server) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer not-a-key"}) as http:
        answer = await http.post(
            f"{server.url}/mcp", json={}, headers={"Accept": "application/json, text/event-stream"}
        )
    assert answer.status_code == 401 and "invalid API key" in answer.json()["detail"]
    with server.client("alice") as alice:
        workspace = alice.create()
        try:
            async with over_http(server, KEYS["bob"]) as bob:
                theirs = await bob.call_tool("exec", {"workspace_id": workspace.id, "command": "true"})
            assert theirs.is_error and workspace.id in text(theirs)
        finally:
            alice.delete(workspace.id)


async def test_create_workspace_says_how_to_give_a_network_policy_and_names_a_bad_entry(server: Server) -> None:
    async with over_http(server, KEYS["alice"]) as session:
        create = next(t for t in (await session.list_tools()).tools if t.name == "create_workspace")
        assert create.description is not None and '"allow": [' in create.description and "*." in create.description
        assert "network" in create.input_schema["properties"]
        bad = await session.call_tool("create_workspace", {"network": {"allow": ["pypi.org", "not a name"]}})
        assert bad.is_error and "allow" in text(bad) and "not a name" in text(bad), text(bad)
