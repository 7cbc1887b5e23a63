"""Which TCP ports a workspace listens on: its kernel's socket tables, /proc/net/tcp and tcp6.

Read from inside the sandbox, so they list its own sockets only (gVisor's own tables, or those
of the network namespace it was given), with no tool needed in its image.
"""

from __future__ import annotations

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"  # the kernel's TCP_LISTEN, as the tables write it


def listening_ports(table: str) -> set[int]:
    """The local ports of the listening sockets in one table (`sl local_address rem_address st ...` lines)."""
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == _LISTEN and ":" in fields[1]:
            found.add(int(fields[1].rsplit(":", 1)[1], 16))
    return found
