"""A network of three namespaces for the egress proxy's tests and bench; nothing leaves the machine.

    client ns (10.77.1.2 proxied, 10.77.1.3 direct) --veth-- gateway ns (the proxy) --veth-- server ns
                                                                                    (10.77.2.10-12)

The gateway routes between the two; TCP from 10.77.1.2 is REDIRECTed to the proxy there (transparent:
the client is configured for nothing), TCP from 10.77.1.3 is routed directly (the bench's baseline). The
server namespace runs HTTP (80), HTTPS (443 and 8443, one certificate for every test name, from an
"upstream" CA of the lab's own) and a TCP echo (7000) on every address; it records each request's
headers in a JSON-lines file. Names are resolved by the client itself (curl --resolve): the lab is the
resolver. Everything (namespaces with their interfaces and iptables rules, processes) goes on exit,
also after a failure.

    python -m tests.egress_lab serve DIR     (the servers, run inside the server namespace)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentbox.egress.proxy import Refusal
from agentbox.egress.rules import Policy
from agentbox.egress.supervisor import EgressSupervisor

ROOT = Path(__file__).resolve().parent.parent
CLIENT, DIRECT = "10.77.1.2", "10.77.1.3"
GATEWAY_CLIENT_SIDE, GATEWAY_SERVER_SIDE = "10.77.1.1", "10.77.2.1"
SERVERS = ("10.77.2.10", "10.77.2.11", "10.77.2.12")
NAMES = ("exact.test", "other.test", "wild.test", "a.wild.test", "deep.a.wild.test", "evilwild.test", "api.test")
PROXY_PORT = 15001
BIG = 1 << 20


def usable() -> str | None:
    """Why the lab cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "nsenter", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(upstream CA cert, server cert, server key) for every test name and address."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress lab upstream CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVERS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress lab server")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "upstream-ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class Lab:
    """The namespaces, the servers and the proxy (its supervisor on a loop in a thread of its own)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        tag = secrets.token_hex(3)
        self.ns = {role: f"abx-eg-{tag}-{role}" for role in ("cli", "gw", "srv")}
        self.refusals: list[Refusal] = []
        self.secrets: dict[str, str] = {}
        self.reveals: list[tuple[str, str, list[str]]] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.supervisor: EgressSupervisor | None = None
        self.upstream_ca, self.server_cert, self.server_key = _certificates(directory)
        self.ca_dir = directory / "egress-ca"
        self.requests_log = directory / "requests.jsonl"

    @property
    def egress_ca(self) -> Path:
        return self.ca_dir / "egress-ca.pem"

    def netns(self, role: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns[role]}"]

    def __enter__(self) -> Lab:
        try:
            self._network()
            self._servers()
            self._thread.start()
            self.supervisor = EgressSupervisor(
                ca_dir=self.ca_dir,
                port=PROXY_PORT,
                on_refusal=self.refusals.append,
                resolve_secrets=self._resolve,
                upstream_ca=self.upstream_ca,
                command_prefix=self.netns("gw"),
                peek_timeout=0.3,
            )
            self.call(self.supervisor.start())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _network(self) -> None:
        cli, gw, srv = self.ns["cli"], self.ns["gw"], self.ns["srv"]
        for name in (cli, gw, srv):
            _run("ip", "netns", "add", name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        # Made inside the namespaces: nothing of the lab ever sits in the host's own namespace.
        _run("ip", "link", "add", "c0", "netns", cli, "type", "veth", "peer", "name", "gc", "netns", gw)
        _run("ip", "link", "add", "s0", "netns", srv, "type", "veth", "peer", "name", "gs", "netns", gw)
        for ns, dev, addresses in (
            (cli, "c0", (f"{CLIENT}/24", f"{DIRECT}/24")),
            (gw, "gc", (f"{GATEWAY_CLIENT_SIDE}/24",)),
            (gw, "gs", (f"{GATEWAY_SERVER_SIDE}/24",)),
            (srv, "s0", tuple(f"{a}/24" for a in SERVERS)),
        ):
            for address in addresses:
                _run("ip", "-n", ns, "addr", "add", address, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", cli, "route", "add", "default", "via", GATEWAY_CLIENT_SIDE, "src", CLIENT)
        _run("ip", "-n", srv, "route", "add", "default", "via", GATEWAY_SERVER_SIDE)
        _run(*self.netns("gw"), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _run(*self.netns("gw"), "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "gc", "-s", CLIENT,
             "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(PROXY_PORT))  # fmt: skip

    def _servers(self) -> None:
        command = [*self.netns("srv"), sys.executable, "-m", "tests.egress_lab", "serve", str(self.dir)]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)
        self._processes.append(process)
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the lab's servers did not start")

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _resolve(self, client: str, host: str, names: list[str]) -> dict[str, str]:
        self.reveals.append((client, host, names))
        missing = [n for n in names if n not in self.secrets]
        if missing:
            raise LookupError(f"no secret named {', '.join(missing)}")
        return {n: self.secrets[n] for n in names}

    def policy(self, policy: dict[str, Any] | Policy | None, client: str = CLIENT) -> None:
        """Give the client `policy` (returns once the proxy holds it)."""
        assert self.supervisor is not None
        value = policy if policy is None or isinstance(policy, Policy) else Policy.model_validate(policy)
        self.call(self.supervisor.set_policy(client, value))

    def curl(self, url: str, *args: str, ip: str = SERVERS[0], ca: Path | None = None, direct: bool = False) -> Curl:
        """curl in the client namespace, `url`'s name resolved to `ip`, trusting `ca` (the upstream CA by default)."""
        host = url.split("://", 1)[1].split("/", 1)[0]
        name, _, port = host.partition(":")
        port = port or ("443" if url.startswith("https") else "80")
        if name.replace(".", "").isdigit():
            ip = name  # an address in the URL: where curl goes
        command = [*self.netns("cli"), "curl", "-sS", "-v", "--max-time", "5", "--cacert", str(ca or self.upstream_ca)]
        command += ["--resolve", f"{name}:{port}:{ip}", "--interface", DIRECT if direct else CLIENT, *args, url]
        done = subprocess.run(command, capture_output=True, timeout=30)
        return Curl(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))

    def in_client(self, code: str, *, timeout: float = 60) -> str:
        """Python `code` run in the client namespace; its stdout."""
        done = subprocess.run(
            [*self.netns("cli"), sys.executable, "-c", code], capture_output=True, timeout=timeout, check=True
        )
        return done.stdout.decode()

    def wait_refusals(self, count: int, timeout: float = 5.0) -> list[Refusal]:
        """The refusals once at least `count` have been reported (or all there are after `timeout`)."""
        deadline = time.monotonic() + timeout
        while len(self.refusals) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # and none more on its way
        return list(self.refusals)

    def requests(self) -> list[dict[str, Any]]:
        if not self.requests_log.exists():
            return []
        return [json.loads(line) for line in self.requests_log.read_text().splitlines() if line]

    def close(self) -> None:
        if self.supervisor is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self.supervisor.stop())
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        for process in self._processes:
            process.kill()
            process.wait(5)
        for name in self.ns.values():
            # The interfaces, addresses and iptables rules live in the namespaces and go with them.
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class Curl:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def issuer(self) -> str:
        for line in self.err.splitlines():
            if "issuer:" in line:
                return line.split("issuer:", 1)[1].strip()
        return ""

    def __repr__(self) -> str:
        return f"Curl(code={self.code}, out={self.out[:200]!r}, err={self.err[-600:]!r})"


@contextlib.contextmanager
def lab(directory: Path) -> Iterator[Lab]:
    with Lab(directory) as running:
        yield running


# ---- the servers (inside the server namespace) ----


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the head and the body are two writes: no 40 ms delayed-ACK stall
    log_path: Path
    lock = threading.Lock()
    chunk = b"x" * BIG

    def do_GET(self) -> None:
        host = self.connection.getsockname()[0]
        record = {"host": self.headers.get("Host"), "path": self.path, "headers": dict(self.headers.items())}
        record["server"] = host
        with self.lock, self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        if self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            view = memoryview(self.chunk)
            while size > 0:
                self.wfile.write(view[: min(size, BIG)])
                size -= BIG
            return
        body = f"hello from {host} for {self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *_: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def serve(directory: Path) -> None:
    _Handler.log_path = directory / "requests.jsonl"
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(directory / "server.pem", directory / "server-key.pem")
    servers: list[socketserver.BaseServer] = [_Server(("0.0.0.0", 80), _Handler)]
    for port in (443, 8443):
        secure = _Server(("0.0.0.0", port), _Handler)
        # The handshake in the request's thread, not in the one that accepts.
        secure.socket = tls.wrap_socket(secure.socket, server_side=True, do_handshake_on_connect=False)
        servers.append(secure)
    servers.append(_EchoServer(("0.0.0.0", 7000), _Echo))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(Path(sys.argv[2]))
