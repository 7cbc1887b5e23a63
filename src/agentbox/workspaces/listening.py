"""Which TCP ports a workspace listens on: its kernel's socket tables, /proc/net/tcp and tcp6.

Read from inside the sandbox, so they list its own sockets only (gVisor's own tables, or those
of the network namespace it was given), with no tool needed in its image.
"""

from __future__ import annotations

from collections.abc import Iterator

from agentbox.errors import ProviderError
from agentbox.sandbox.runtime import close_stream

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: A table is read whole. The helper sends a /proc file as one read of at most 1 MiB
#: (files.c, SIZELESS_MAX): one announced past this is not agentbox's helper talking.
MAX_TABLE = 4 << 20
_LISTEN = "0A"  # the kernel's TCP_LISTEN, as the tables write it


def table_text(path: str, size: int, chunks: Iterator[bytes]) -> str:
    """A socket table's text; ProviderError (its read closed) when it is announced past MAX_TABLE."""
    if size > MAX_TABLE:
        close_stream(chunks)
        raise ProviderError(
            f"the workspace's helper announced {size} bytes for {path} (at most {MAX_TABLE}), which agentbox's helper "
            "never does: something in the workspace may have replaced it. Stop and start the workspace (its files "
            "are kept)"
        )
    return b"".join(chunks).decode(errors="replace")


def listening_ports(table: str) -> set[int]:
    """The local ports of the listening sockets in one table (`sl local_address rem_address st ...` lines)."""
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == _LISTEN and ":" in fields[1]:
            try:
                found.add(int(fields[1].rsplit(":", 1)[1], 16))
            except ValueError:  # not the kernel's table: what answered for it is not our helper
                continue
    return found
