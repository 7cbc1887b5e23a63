"""The MCP tools end to end, in-process: the official SDK's client against the real app over fake providers.

Over streamable HTTP, the client's requests are handed to the app at /mcp (its lifespan running
in the test's own event loop); over stdio, `agentbox mcp` runs as a subprocess and calls the app
served by uvicorn on a loopback port.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from fastapi import FastAPI
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from pydantic import BaseModel
from typer.testing import CliRunner

from agentbox.cli.main import app as cli
from agentbox.mcp import answers
from agentbox.mcp.tools import TOOLS, OutputFrom
from agentbox.wire.commands import ExecIn
from agentbox.wire.processes import ProcessIn, SessionIn
from agentbox.wire.tools import EditToolIn, GlobToolIn, GrepToolIn, ReadToolIn, WriteToolIn
from agentbox.wire.workspaces import CreateWorkspace, SetNetwork
from tests.fake_provider import BY_NAME, FakeProvider
from tests.mcp_sessions import over_stdio, over_streamable_http, text
from tests.unit.apps import KEYS, build_app, uvicorn_serving

pytestmark = pytest.mark.anyio

BASE = "http://agentbox"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def providers() -> dict[str, FakeProvider]:
    return {"gvisor": FakeProvider("gvisor")}


@asynccontextmanager
async def served(tmp_path: Path, providers: dict[str, FakeProvider] | None) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running (the service, and the MCP endpoint) in this event loop."""
    app = build_app(tmp_path, providers)
    async with app.router.lifespan_context(app):
        yield app


def http_client(app: FastAPI, key: str | None) -> httpx2.AsyncClient:
    """An HTTP client (httpx2, as the SDK's transport takes) whose requests go to `app` in-process."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE, headers=headers)


@asynccontextmanager
async def mcp_session(app: FastAPI, key: str) -> AsyncIterator[ClientSession]:
    """An initialized MCP session with `app` at /mcp, as the owner of `key`."""
    async with http_client(app, key) as http, over_streamable_http(http, f"{BASE}/mcp") as session:
        yield session


async def api_detail(app: FastAPI, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The `detail` of the HTTP API's error answer to the same request."""
    async with http_client(app, key) as http:
        answer = await http.request(method, f"/api/v1{path}", json=body)
    assert answer.status_code >= 400
    return answer.json()["detail"]


def with_workspace_id(body: type[BaseModel], workspace_id: dict[str, Any]) -> dict[str, Any]:
    """`body`'s JSON schema with a required `workspace_id` first."""
    schema = body.model_json_schema()
    schema["properties"] = {"workspace_id": workspace_id, **schema["properties"]}
    schema["required"] = ["workspace_id", *schema.get("required", [])]
    return schema


async def test_the_tools_take_the_api_bodies_as_their_arguments(tmp_path: Path, providers: Any) -> None:
    async with served(tmp_path, providers) as app, mcp_session(app, KEYS["alice"]) as session:
        listed = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(listed) == {
        "create_workspace",
        "list_workspaces",
        "set_network",
        "snapshot_workspace",
        "fork_workspace",
        "build_template",
        "template_status",
        "delete_workspace",
        "exec",
        "start_process",
        "process_output",
        "kill_process",
        "read_file",
        "write_file",
        "edit_file",
        "glob",
        "grep",
        "open_session",
        "run_in_session",
        "close_session",
        "preview_url",
    }
    assert listed["create_workspace"].input_schema == CreateWorkspace.model_json_schema()
    workspace_id = listed["exec"].input_schema["properties"]["workspace_id"]
    assert workspace_id["type"] == "string" and workspace_id["description"]
    bodies: list[tuple[str, type[BaseModel]]] = [
        ("exec", ExecIn),
        ("start_process", ProcessIn),
        ("read_file", ReadToolIn),
        ("write_file", WriteToolIn),
        ("edit_file", EditToolIn),
        ("glob", GlobToolIn),
        ("grep", GrepToolIn),
        ("open_session", SessionIn),
        ("set_network", SetNetwork),
    ]
    for name, body in bodies:
        assert listed[name].input_schema == with_workspace_id(body, workspace_id), name
    assert listed["process_output"].input_schema == OutputFrom.model_json_schema()
    assert all(tool.description for tool in listed.values())


async def test_an_agent_writes_edits_runs_and_reads_a_file_in_a_workspace_it_then_deletes(
    tmp_path: Path, providers: dict[str, FakeProvider]
) -> None:
    async with served(tmp_path, providers) as app, mcp_session(app, KEYS["alice"]) as session:
        created = await session.call_tool("create_workspace", {"labels": {"task": "mcp"}})
        assert not created.is_error and created.structured_content is not None
        workspace = created.structured_content
        assert (workspace["owner"], workspace["labels"], workspace["status"]) == ("alice", {"task": "mcp"}, "running")
        assert json.loads(text(created)) == workspace  # the text is the same JSON, to read
        ws = {"workspace_id": workspace["id"]}

        written = await session.call_tool("write_file", {**ws, "path": "/workspace/notes.txt", "content": "x = 1\n"})
        assert text(written) == "wrote 6 bytes to /workspace/notes.txt"
        assert written.structured_content == {"path": "/workspace/notes.txt", "size": 6}
        edited = await session.call_tool(
            "edit_file", {**ws, "path": "/workspace/notes.txt", "old_string": "x = 1", "new_string": "x = 2"}
        )
        assert text(edited) == "replaced once in /workspace/notes.txt"
        ran = await session.call_tool("exec", {**ws, "command": "cat /workspace/notes.txt; cat /nope; exit 3"})
        assert ran.structured_content is not None
        assert (ran.structured_content["exit_code"], ran.structured_content["stdout"]) == (3, "x = 2\n")
        assert text(ran) == (
            "exit code 3\n--- stdout ---\nx = 2\n--- stderr ---\ncat: /nope: No such file or directory"
        )
        read = await session.call_tool("read_file", {**ws, "path": "/workspace/notes.txt"})
        assert text(read) == "     1\tx = 2\n"
        assert read.structured_content is not None and read.structured_content["total_lines"] == 1

        found = await session.call_tool("list_workspaces", {"label": ["task=mcp"]})
        assert found.structured_content is not None
        assert [w["id"] for w in found.structured_content["workspaces"]] == [workspace["id"]]
        deleted = await session.call_tool("delete_workspace", ws)
        assert (deleted.is_error, text(deleted)) == (False, f"deleted workspace {workspace['id']}")
        left = await session.call_tool("list_workspaces", {})
        assert left.structured_content == {"workspaces": []}
    assert providers["gvisor"].sandboxes == {}


async def test_a_refusal_of_the_api_is_a_tool_error_with_its_detail(tmp_path: Path, providers: Any) -> None:
    async with served(tmp_path, providers) as app:
        async with mcp_session(app, KEYS["alice"]) as alice:
            created = await alice.call_tool("create_workspace", {})
            assert created.structured_content is not None
            workspace_id = created.structured_content["id"]
            await alice.call_tool("write_file", {"workspace_id": workspace_id, "path": "/workspace/a", "content": "a"})
            edit = {"path": "/workspace/a", "old_string": "zzz", "new_string": "y"}
            missing = await alice.call_tool("edit_file", {"workspace_id": workspace_id, **edit})
            assert missing.is_error and missing.structured_content is None
            expected = await api_detail(app, KEYS["alice"], "POST", f"/workspaces/{workspace_id}/tools/edit", edit)
            assert text(missing) == expected and "not found" in expected

            # The route's own checks, past the arguments' validation: a 422 with a string detail, a 400.
            bad_label = await alice.call_tool("list_workspaces", {"label": ["nokey"]})
            assert (bad_label.is_error, text(bad_label)) == (True, "label filter 'nokey' must be key=value")
            no_processes = await alice.call_tool("start_process", {"workspace_id": workspace_id, "command": "true"})
            assert no_processes.is_error and "gvisor" in text(no_processes)

        async with mcp_session(app, KEYS["bob"]) as bob:
            theirs = await bob.call_tool("exec", {"workspace_id": workspace_id, "command": "true"})
            expected = await api_detail(app, KEYS["bob"], "POST", f"/workspaces/{workspace_id}/exec", {"command": "x"})
            assert theirs.is_error and text(theirs) == expected and workspace_id in expected
            assert (await bob.call_tool("delete_workspace", {"workspace_id": workspace_id})).is_error
    assert len(providers["gvisor"].sandboxes) == 1  # bob could not delete it


async def test_an_error_of_the_server_is_a_tool_error_too(tmp_path: Path) -> None:
    def broken(_sandbox: object, _request: object) -> tuple[int, bytes, bytes]:
        raise RuntimeError("a bug")

    async with (
        served(tmp_path, {"gvisor": FakeProvider("gvisor", handler=broken)}) as app,
        mcp_session(app, KEYS["alice"]) as session,
    ):
        created = await session.call_tool("create_workspace", {})
        assert created.structured_content is not None
        failed = await session.call_tool("exec", {"workspace_id": created.structured_content["id"], "command": "x"})
    assert (failed.is_error, text(failed)) == (True, "internal error (RuntimeError); see the server log")


async def test_bad_arguments_are_a_tool_error_naming_each_field(tmp_path: Path, providers: Any) -> None:
    async with served(tmp_path, providers) as app, mcp_session(app, KEYS["alice"]) as session:
        missing = await session.call_tool("exec", {"command": "true"})
        assert (missing.is_error, text(missing)) == (True, "workspace_id: Field required")
        wrong = await session.call_tool("read_file", {"workspace_id": "ws-0", "path": "relative", "limit": 0})
        assert wrong.is_error
        assert text(wrong).splitlines() == [
            "path: Value error, 'relative' is not an absolute path: start it with /",
            "limit: Input should be greater than or equal to 1",
        ]
        extra = await session.call_tool("create_workspace", {"surprise": 1})
        assert (extra.is_error, text(extra)) == (True, "surprise: Extra inputs are not permitted")
        with pytest.raises(MCPError, match="unknown tool"):
            await session.call_tool("format_disk", {})


async def test_mcp_needs_a_valid_key_as_the_api_does(tmp_path: Path, providers: Any) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Accept": "application/json, text/event-stream"}
    async with served(tmp_path, providers) as app:
        for key, says in [(None, "missing API key"), ("not-a-key", "invalid API key")]:
            async with http_client(app, key) as http:
                answer = await http.post("/mcp", json=initialize, headers=headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
            assert says in answer.json()["detail"]
        async with http_client(app, KEYS["alice"]) as http:
            assert (await http.post("/mcp", json=initialize, headers=headers)).status_code == 200
            # Stateless: no stream of the server's own to open.
            assert (await http.get("/mcp", headers={"Accept": "text/event-stream"})).status_code == 405
            assert "/mcp" not in (await http.get("/openapi.json")).json()["paths"]


async def test_mcp_is_not_found_when_workspaces_are_disabled(tmp_path: Path) -> None:
    async with served(tmp_path, providers=None) as app, http_client(app, KEYS["alice"]) as http:
        answer = await http.post("/mcp", json={})
    assert answer.status_code == 404 and "ENABLE_AGENT_WORKSPACES=true" in answer.json()["detail"]


def test_a_validation_detail_of_the_api_reads_as_one_line_per_argument() -> None:
    detail = [
        {"type": "value_error", "loc": ["body", "cwd"], "msg": "Value error, not absolute"},
        {"type": "greater_than_equal", "loc": ["query", "offset"], "msg": "Input should be >= 0"},
        {"type": "missing", "loc": ["body"], "msg": "Field required"},
    ]
    assert answers.readable(detail) == "cwd: Value error, not absolute\noffset: Input should be >= 0\nField required"
    refused = answers.refusal(httpx.Response(422, json={"detail": detail[:1]}))
    assert (refused.is_error, text(refused)) == (True, "cwd: Value error, not absolute")
    proxy = answers.refusal(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert text(proxy) == "HTTP 502: <html>Bad Gateway</html>"


def test_process_output_is_its_text_then_its_exit_or_where_to_read_on() -> None:
    def output(*lines: dict[str, Any], offset: int = 0) -> CallToolResult:
        body = "".join(json.dumps(line) + "\n" for line in lines)
        arguments = OutputFrom(workspace_id="ws-1", pid=7, offset=offset)
        return answers.output_answer(httpx.Response(200, text=body), arguments)

    running = output(
        {"stream": "stdout", "offset": 5, "next_offset": 9, "data": "one\n"},
        {"stream": "stderr", "offset": 9, "next_offset": 13, "data": "two"},
        offset=5,
    )
    assert text(running) == "one\ntwo\n[still running: call again with offset=13 for what comes next]"
    assert running.structured_content is not None and running.structured_content["next_offset"] == 13
    ended = output(
        {"dropped": True, "offset": 0, "resumed_at": 100},
        {"exit_code": None, "signal": "SIGKILL", "ended_at": "2026-01-01T00:00:00Z"},
    )
    assert text(ended) == "[output up to byte 100 is no longer kept]\n[ended by SIGKILL]"
    assert ended.structured_content is not None and ended.structured_content["exit"]["signal"] == "SIGKILL"
    assert text(output(offset=3)) == "[still running: call again with offset=3 for what comes next]"
    gone = output({"error": "the workspace's sandbox is gone"})
    assert (gone.is_error, text(gone)) == (True, "the workspace's sandbox is gone")


# Over stdio: `agentbox mcp` against a real HTTP server.


@pytest.fixture
def server_url(tmp_path: Path, providers: dict[str, FakeProvider]) -> Iterator[str]:
    with uvicorn_serving(build_app(tmp_path, providers)) as url:
        yield url


async def test_agentbox_mcp_serves_the_tools_over_stdio(server_url: str, providers: dict[str, FakeProvider]) -> None:
    async with over_stdio(env={"AGENTBOX_URL": server_url, "AGENTBOX_API_KEY": KEYS["alice"]}) as session:
        assert {tool.name for tool in (await session.list_tools()).tools} == {tool.name for tool in TOOLS}
        created = await session.call_tool("create_workspace", {})
        assert created.structured_content is not None and created.structured_content["owner"] == "alice"
        ran = await session.call_tool("exec", {"workspace_id": created.structured_content["id"], "command": "echo hi"})
        assert text(ran) == "exit code 0\n--- stdout ---\nhi"
        theirs = await session.call_tool("delete_workspace", {"workspace_id": "ws-0000000000000000"})
        assert theirs.is_error and "ws-0000000000000000" in text(theirs)
    assert len(providers["gvisor"].sandboxes) == 1


async def test_agentbox_mcp_says_when_the_server_cannot_be_reached() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with over_stdio("--url", url, "--api-key", KEYS["alice"]) as session:
        failed = await session.call_tool("list_workspaces", {})
    assert failed.is_error and text(failed).startswith(f"cannot reach the agentbox server at {url}")


def test_agentbox_mcp_needs_an_api_key() -> None:
    refused = CliRunner().invoke(cli, ["mcp"], env={"AGENTBOX_API_KEY": ""})
    assert refused.exit_code == 2 and "no API key" in refused.output


async def test_an_agent_changes_a_workspaces_network_and_a_bad_entry_is_named(tmp_path: Path) -> None:
    provider = FakeProvider("gvisor", capabilities=BY_NAME)
    async with served(tmp_path, {"gvisor": provider}) as app:
        async with mcp_session(app, KEYS["alice"]) as alice:
            created = await alice.call_tool("create_workspace", {})
            assert created.structured_content is not None
            workspace_id = created.structured_content["id"]
            policy = {"allow": ["pypi.org", "*.github.com"], "deny": ["gist.github.com"]}

            changed = await alice.call_tool("set_network", {"workspace_id": workspace_id, "network": policy})
            assert not changed.is_error and changed.structured_content is not None
            allowed = [entry["target"] for entry in changed.structured_content["network"]["allow"]]
            assert allowed == ["pypi.org", "*.github.com"]
            (enforced,) = provider.networks.values()  # the provider was handed the policy
            assert enforced.deny[0].describe() == "gist.github.com"

            wildcard = {"allow": ["*.com"]}
            bad = await alice.call_tool("set_network", {"workspace_id": workspace_id, "network": wildcard})
            assert bad.is_error and "*.com" in text(bad)
            to_none = await alice.call_tool("set_network", {"workspace_id": workspace_id, "network": "none"})
            assert to_none.is_error and '"none"' in text(to_none)

        async with mcp_session(app, KEYS["bob"]) as bob:
            theirs = await bob.call_tool("set_network", {"workspace_id": workspace_id, "network": "egress"})
            expected = await api_detail(
                app, KEYS["bob"], "PATCH", f"/workspaces/{workspace_id}/network", {"network": "egress"}
            )
            assert theirs.is_error and text(theirs) == expected and workspace_id in expected
