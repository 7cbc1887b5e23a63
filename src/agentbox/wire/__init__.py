"""Request and answer bodies by resource, and the value types they carry: free of the ORM, the settings
and the server, so that the client is light.

common.py      what every body shares: the fields' types (absolute paths, seconds, environments, labels,
               sizes, command lines) and ErrorOut, the body of every error
workspaces.py  workspaces: one to make, a longer life, a workspace as answered, its CPU and memory
commands.py    exec: a command to run, how it ended, the lines of its streamed output
files.py       files: a directory's listing, a write's result, a watch's events
tools.py       the file tools: read, write, edit, glob and grep
processes.py   background processes, terminals and shell sessions
keys.py        API keys and their quotas
github.py      GitHub Apps, and the repository checked out into a workspace when it is made
ports.py       what listens in a workspace, and preview URLs onto it
audit.py       a workspace's audit trail
system.py      the server's health, its providers, its capacity
domain.py      the plain value types the core takes (NewWorkspace, Command, Checkout, Quota), and the names
               that bodies, rows and settings share (Status, ProviderName)
network.py     network policies ("egress", "none", an allow list)
sizes.py       byte sizes as people write them ("4G") and as Docker reads them
"""
