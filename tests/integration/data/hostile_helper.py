"""A hostile helper (tests and the bench): in a workspace, `python3 hostile_helper.py WORKSPACE_ID MODE`
replaces the helper's listener on its control socket. Each connection gets the
hello the host expects, then, by MODE: "frame" a stdout frame said to be 4 GiB long (and bytes
after it), "line" output that never ends its first line, "file" a well-formed answer to `get`
for a file of 4 GB (whatever was asked). At most BUDGET bytes a connection, so a host that
gathers everything ends (and fails the test) instead of exhausting the machine.
"""

import os
import socket
import struct
import sys
import threading

PATH = "/.agentbox/run/control.sock"
WORKSPACE, MODE = sys.argv[1], sys.argv[2]
BUDGET = 192 << 20
FILE = b"F 4000000000 644\n"
PIECE = {
    "frame": bytes(1 << 16),
    "line": struct.pack(">BL", 1, 1 << 16) + b"F" * (1 << 16),
    "file": struct.pack(">BL", 1, 1 << 16) + bytes(1 << 16),
}[MODE]
FIRST = {"frame": struct.pack(">BL", 1, 0xFFFFFFFF), "line": b"", "file": struct.pack(">BL", 1, len(FILE)) + FILE}[MODE]


def exactly(conn, size):
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ConnectionError
        data += more
    return data


def serve(conn):
    with conn:
        try:
            (length,) = struct.unpack(">L", exactly(conn, 4))
            exactly(conn, length)
            conn.sendall(b"AGX1 %s\n" % WORKSPACE.encode() + FIRST)
            sent = 0
            while sent < BUDGET:
                conn.sendall(PIECE)
                sent += len(PIECE)
        except OSError:
            pass


server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
os.unlink(PATH)
server.bind(PATH)
server.listen(64)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
