"""The HTTP API under /api/v1: each resource's routes in a module of their own, mounted by
agentbox.server.app. Routes validate, ask the core (agentbox.workspaces) and shape the answer.

workspaces.py  create, list, get, delete, stop, start, pause, extend, usage
commands.py    exec and exec/stream          files.py      files and archives
processes.py   background processes          terminals.py  terminals (WebSocket)
sessions.py    shell sessions                tools.py      read, edit, glob, grep
ports.py       listening ports and previews  audit.py      the audit trail
keys.py        API keys                      github.py     GitHub Apps and git push
dashboard.py   the dashboard's static files  (the server's own: agentbox.server.system)
"""
