"""HTTP plumbing shared by the faces (the API, the E2B endpoint, MCP): callers and credentials, rate
limits, revocation, the preview proxy and WebSocket relays, streaming answers.
"""
