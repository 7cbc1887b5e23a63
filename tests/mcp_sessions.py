"""MCP sessions with agentbox through the official SDK's client, as the unit and integration tests open them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent


@asynccontextmanager
async def over_streamable_http(http: httpx2.AsyncClient, url: str) -> AsyncIterator[ClientSession]:
    """An initialized session with the MCP endpoint at `url`, whose requests `http` sends (with its headers)."""
    async with streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def over_stdio(*options: str, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """An initialized session with `agentbox mcp OPTIONS` launched as a subprocess."""
    command = StdioServerParameters(command=sys.executable, args=["-m", "agentbox.cli", "mcp", *options], env=env)
    async with stdio_client(command) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text(result: CallToolResult) -> str:
    """The one text block of a tool's result."""
    (block,) = result.content
    assert isinstance(block, TextContent)
    return block.text
