"""The HTTP API under /api/v1: `create_app` builds it (app.py); each resource's routes live in a module of their own.

dependencies.py  what handlers take from a request: the manager, the caller, the GitHub service
workspaces.py    create, list, get, delete, stop, start, extend
commands.py      exec and exec/stream
files.py         files and archives
github.py        GitHub Apps and git push
system.py        health and metrics
"""

from agentbox.api.app import create_app
from agentbox.api.commands import ndjson_lines

__all__ = ["create_app", "ndjson_lines"]
