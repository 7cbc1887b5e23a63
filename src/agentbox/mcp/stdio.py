"""`agentbox mcp`: the MCP tools over stdin and stdout, for MCP clients that launch a command.

Each tool call is a request to a running agentbox server's HTTP API, with one API key: the
server authenticates and validates it as any other client's.
"""

from __future__ import annotations

import httpx
from mcp.server.stdio import stdio_server

from agentbox.mcp.server import build_server

#: No read timeout: a command's own `timeout` (or the server's WORKSPACE_EXEC_TIMEOUT) bounds an exec.
TIMEOUT = httpx.Timeout(30.0, read=None)


async def serve(url: str, api_key: str) -> None:
    """Serve MCP on stdin and stdout until stdin ends; tools call the server at `url` as the owner of `api_key`.

    Raises nothing for an unreachable server or a refused key: each tool call says so as a tool error.
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT) as api:
        server = build_server(api, lambda _ctx: {})
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
