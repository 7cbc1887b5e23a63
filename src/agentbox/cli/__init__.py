"""The `agentbox` command: the server, the host check, and workspaces driven from a shell through the
client.
"""
