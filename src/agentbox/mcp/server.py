"""The MCP server: tools/list from the table of tools, tools/call as a request to the HTTP API.

Both transports build it over an `httpx.AsyncClient` of the API: in-process for /mcp, over the
network for `agentbox mcp`. What the client sends besides its own headers (the caller's key,
for /mcp) comes from `headers_of`, called with each request's MCP context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any
from urllib.parse import quote

import httpx
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams
from mcp.types import Tool as MCPTool
from pydantic import BaseModel, ValidationError

from agentbox.mcp import answers
from agentbox.mcp.tools import API_PREFIX, TOOLS, Tool

#: The headers a tool call adds to its request of the API, given the MCP request's context.
HeadersOf = Callable[[ServerRequestContext[Any, Any]], Mapping[str, str]]

INSTRUCTIONS = (
    "agentbox gives you isolated Linux workspaces to run code in. Create one with create_workspace, "
    "pass its id as workspace_id to the other tools, and delete it with delete_workspace when you are "
    "done. Paths in a workspace are absolute; its working directory is /workspace. Use read_file, "
    "write_file, edit_file, glob and grep for files; open_session and run_in_session for shell commands "
    "that build on each other (cd, variables); exec for one-off commands; start_process for servers, "
    "and preview_url to open one in a browser."
)


def build_server(api: httpx.AsyncClient, headers_of: HeadersOf, tools: Sequence[Tool] = TOOLS) -> Server[Any]:
    """An MCP server offering `tools`, each call of which is a request made with `api`."""
    schemas = {t.name: t.input_schema() for t in tools}
    listed = [MCPTool(name=t.name, description=t.description, input_schema=schemas[t.name]) for t in tools]
    by_name = {t.name: t for t in tools}

    async def list_tools(
        _ctx: ServerRequestContext[Any, Any], _params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=listed)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams) -> CallToolResult:
        tool = by_name.get(params.name)
        if tool is None:  # a protocol error, as the specification has it for an unknown tool
            raise MCPError(code=INVALID_PARAMS, message=f"unknown tool {params.name!r}: tools/list names them")
        return await call(api, tool, params.arguments or {}, headers_of(ctx))

    return Server(
        "agentbox",
        version=version("agentbox"),
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=schemas.get,
    )


async def call(
    api: httpx.AsyncClient, tool: Tool, arguments: dict[str, Any], headers: Mapping[str, str]
) -> CallToolResult:
    """`tool` called with `arguments`: the route's answer as the tool's result.

    Never raises for what the agent or the server did: bad arguments (each field and what is
    wrong), an error answer (the API's `detail`), an unreachable server and an answer that is not
    agentbox's all come back as a tool error (`isError`).
    """
    try:
        valid = tool.arguments.model_validate(arguments)
    except ValidationError as exc:
        return answers.failure(answers.invalid(exc.errors(include_url=False, include_input=False)))
    try:
        response = await api.request(
            tool.method,
            _path(tool, valid),
            params=_query(tool, valid),
            # The body as given, not as validated: the route then validates exactly what was asked.
            json={k: v for k, v in arguments.items() if k in tool.body_fields} if tool.body_fields else None,
            headers=dict(headers),
        )
    except httpx.HTTPError as exc:
        return answers.failure(
            f"cannot reach the agentbox server at {api.base_url}: {exc}; is it running? (--url, AGENTBOX_URL)"
        )
    if response.is_error:
        return answers.refusal(response)
    try:
        return tool.answer(response, valid)
    except ValueError as exc:
        return answers.failure(
            f"the answer to {tool.name} is not what agentbox answers ({exc}): "
            f"is {api.base_url} an agentbox server of this version?"
        )


def _path(tool: Tool, arguments: BaseModel) -> str:
    # Quoted whole, so that an id cannot reach another route ("../..").
    values = {field: quote(str(getattr(arguments, field)), safe="") for field in tool.path_fields}
    return API_PREFIX + tool.path.format(**values)


def _query(tool: Tool, arguments: BaseModel) -> dict[str, Any]:
    # A list becomes a repeated parameter (label=a=1&label=b=2), as the routes take it.
    return arguments.model_dump(mode="json", include=set(tool.query), exclude_none=True)
