"""Who gets in: API keys as records, the tokens made from them, and limits on failed attempts.

Everything here is below HTTP: the API, the E2B endpoint and MCP ask it who a caller is.
"""
