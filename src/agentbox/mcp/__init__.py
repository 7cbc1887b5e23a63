"""agentbox's tools over MCP (the Model Context Protocol), on the official `mcp` SDK's low-level server.

Both transports serve the same tools, and every tool call is a request to the HTTP API, so MCP
goes through the API's own routes, validation, keys and owner isolation:

tools.py    the table: one entry per tool (its arguments model, route and answer)
answers.py  how the API's answers become tool results, and its errors tool errors
server.py   the MCP server: tools/list from the table, tools/call as a request to the API
http.py     /mcp in the API's app (streamable HTTP), its tools calling the app in-process
stdio.py    `agentbox mcp` (stdio), its tools calling a running server over HTTP

The package is `agentbox.mcp`; the SDK is the top-level `mcp` (imports are absolute).
"""
