"""A web server for preview tests, stdlib only: HTTP answers describe the request; WebSocket messages are echoed.

python3 echo_server.py PORT    (listens on 127.0.0.1 only: reachable from inside the workspace alone)
"""

import base64
import hashlib
import json
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket()
        else:
            self.describe(b"")

    def do_POST(self) -> None:
        self.describe(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def describe(self, body: bytes) -> None:
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body.decode()}
        data = json.dumps(seen)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Served-By", "echo")
        self.send_header("Set-Cookie", "first=1")
        self.send_header("Set-Cookie", "second=2")
        self.end_headers()
        self.wfile.write(data.encode())

    def websocket(self) -> None:
        accept = base64.b64encode(hashlib.sha1(self.headers["Sec-WebSocket-Key"].encode() + WS_GUID).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close: answer it and end
                self.wfile.write(b"\x88" + bytes([len(payload[:2])]) + payload[:2])
                return
            reply = b"echo: " + payload
            size = bytes([len(reply)]) if len(reply) < 126 else b"\x7f" + struct.pack(">Q", len(reply))
            self.wfile.write(bytes([0x80 | opcode]) + size + reply)
            self.wfile.flush()

    def log_message(self, *_args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
