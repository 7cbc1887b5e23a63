"""A network of three namespaces for the egress proxy's tests and bench; nothing leaves the machine.

    client ns (10.77.1.2 proxied, 10.77.1.3 direct) --veth-- gateway ns (the proxy) --veth-- server ns
                                                                                    (10.77.2.10-12)

The gateway routes between the two; TCP from 10.77.1.2 is REDIRECTed to the proxy there (transparent:
the client is configured for nothing), TCP from 10.77.1.3 is routed directly (the bench's baseline). The
server namespace runs HTTP (80), HTTPS (443 and 8443, one certificate for every test name, from an
"upstream" CA of the lab's own) and a TCP echo (7000) on every address; it records each request's
headers in a JSON-lines file. It also runs the upstream DNS server (10.77.2.53, dnslib), answering from
a zone file the tests rewrite (`Lab.zone`), logging every query it gets.

Names are resolved as a workspace resolves them: the client's resolv.conf (/etc/netns/NAME/, which `ip
netns exec` mounts) names the agentbox resolver, which runs in the proxy's process on the gateway
(10.77.1.1:53) and asks the upstream. `Lab.curl(..., ip=...)` pins a name to an address instead (curl
--resolve: the resolver is not asked), as a workspace that dials an address of its own choosing.
Everything (namespaces with their interfaces and iptables rules, /etc/netns/NAME, processes) goes on
exit, also after a failure.

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
import re
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
from dnslib import CNAME, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from agentbox.egress.proxy import Refusal
from agentbox.egress.resolver import ResolverConfig
from agentbox.egress.rules import Policy
from agentbox.egress.supervisor import EgressSupervisor
from tests import git_http
from tests.git_http import Minted

ROOT = Path(__file__).resolve().parent.parent
CLIENT, DIRECT = "10.77.1.2", "10.77.1.3"
OTHER = "10.77.1.4"  # a second proxied client (another workspace, to the proxy)
GATEWAY_CLIENT_SIDE, GATEWAY_SERVER_SIDE = "10.77.1.1", "10.77.2.1"
SERVERS = ("10.77.2.10", "10.77.2.11", "10.77.2.12")
UPSTREAM_DNS = "10.77.2.53"
NAMES = (
    "exact.test",
    "other.test",
    "wild.test",
    "a.wild.test",
    "deep.a.wild.test",
    "evilwild.test",
    "api.test",
    "github.test",
)
#: A smart-HTTP path of a repository (GitHub serves `/OWNER/NAME.git/...` and `/OWNER/NAME/...`).
GIT_PATH = re.compile(r"^/([^/?]+)/([^/?]+?)(?:\.git)?/(info/refs|git-upload-pack|git-receive-pack)(?:\?(.*))?$")
PROXY_PORT = 15001
#: The resolver's bounds in the lab: small, so that a test reaches them with a few hundred queries.
RESOLVER = ResolverConfig(
    host=GATEWAY_CLIENT_SIDE,
    upstreams=(UPSTREAM_DNS,),
    timeout=3.0,
    grace=1.0,
    answers_per_client=64,
    client_in_flight=4,
    in_flight=8,
)
#: Names below these answer with this address; names starting "slow" are answered after `SLOW` s.
ZONE: dict[str, dict[str, Any]] = {
    **{name: {"a": [SERVERS[0]], "ttl": 300} for name in NAMES},
    "*.wild.test": {"a": [SERVERS[0]], "ttl": 300},
    "*.flood.test": {"a": [SERVERS[1]], "ttl": 300},
    "alias.test": {"cname": "exact.test", "ttl": 300},
    "*.nowhere.test": {"a": [SERVERS[0]], "ttl": 300},
}
SLOW = 1.0
BIG = 1 << 20

#: Run inside a workspace (`python3 -c FETCH '["url", ...]' [curl arguments]`): fetch each URL with curl (the
#: system's CA bundle, as any tool would) and print, as JSON, what came back for each: the HTTP status, or curl's
#: exit code ("curl 7": refused, "curl 28": timed out).
FETCH = """
import json, subprocess, sys
found = {}
for url in json.loads(sys.argv[1]):
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "8"] + sys.argv[2:]
    done = subprocess.run(args + [url], capture_output=True, text=True)
    found[url] = done.stdout if done.returncode == 0 else f"curl {done.returncode}"
print(json.dumps(found))
"""


def usable() -> str | None:
    """Why the lab cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "nsenter", "curl", "getent"):
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

    def __init__(self, directory: Path, max_client_connections: int = 512) -> None:
        self.dir = directory
        self.max_client_connections = max_client_connections
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
        self.zone_file = directory / "zone.json"
        self.dns_log = directory / "dns.jsonl"
        self.netns_etc = Path("/etc/netns") / self.ns["cli"]

    @property
    def egress_ca(self) -> Path:
        return self.ca_dir / "egress-ca.pem"

    def netns(self, role: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns[role]}"]

    def client(self) -> list[str]:
        """A command's prefix in the client namespace, with its resolv.conf naming the agentbox resolver."""
        return ["ip", "netns", "exec", self.ns["cli"]]

    def zone(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        """What the upstream DNS server answers from its next query on (the lab's `ZONE` by default)."""
        staging = self.zone_file.with_suffix(".new")
        staging.write_text(json.dumps(records if records is not None else ZONE))
        staging.replace(self.zone_file)  # the server never reads half a file

    def dns_queries(self) -> list[dict[str, Any]]:
        """Every query the upstream DNS server got: {"name", "type", "concurrent"} (queries in progress)."""
        if not self.dns_log.exists():
            return []
        return [json.loads(line) for line in self.dns_log.read_text().splitlines() if line]

    def __enter__(self) -> Lab:
        try:
            self.zone()
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
                resolver=RESOLVER,
                max_client_connections=self.max_client_connections,
                # The lab's tests count every refusal they cause, several within a second; the budget itself
                # is tested on its own (tests/unit/test_egress_answers.py).
                refusals_per_second=1000,
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
            (cli, "c0", (f"{CLIENT}/24", f"{DIRECT}/24", f"{OTHER}/24")),
            (gw, "gc", (f"{GATEWAY_CLIENT_SIDE}/24",)),
            (gw, "gs", (f"{GATEWAY_SERVER_SIDE}/24",)),
            (srv, "s0", (*(f"{a}/24" for a in SERVERS), f"{UPSTREAM_DNS}/24")),
        ):
            for address in addresses:
                _run("ip", "-n", ns, "addr", "add", address, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", cli, "route", "add", "default", "via", GATEWAY_CLIENT_SIDE, "src", CLIENT)
        _run("ip", "-n", srv, "route", "add", "default", "via", GATEWAY_SERVER_SIDE)
        _run(*self.netns("gw"), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # DNS over TCP to the resolver is the one TCP from the client that is not the proxy's.
        for client in (CLIENT, OTHER):
            _run(*self.netns("gw"), "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "gc", "-s", client,
                 "-d", GATEWAY_CLIENT_SIDE, "-p", "tcp", "--dport", "53", "-j", "RETURN")  # fmt: skip
            _run(*self.netns("gw"), "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "gc", "-s", client,
                 "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(PROXY_PORT))  # fmt: skip
        self.netns_etc.mkdir(parents=True)
        # One try, two seconds: a resolver that does not answer fails a test rather than hanging it.
        resolv = f"nameserver {GATEWAY_CLIENT_SIDE}\noptions timeout:2 attempts:1\n"
        (self.netns_etc / "resolv.conf").write_text(resolv)

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

    def curl(self, url: str, *args: str, ip: str | None = None, ca: Path | None = None, direct: bool = False) -> Curl:
        """curl in the client namespace trusting `ca` (the upstream CA by default); `url`'s name resolved by
        the agentbox resolver, or pinned to `ip` (the resolver not asked)."""
        host = url.split("://", 1)[1].split("/", 1)[0]
        name, _, port = host.partition(":")
        port = port or ("443" if url.startswith("https") else "80")
        command = [*self.client(), "curl", "-sS", "-v", "--max-time", "5", "--cacert", str(ca or self.upstream_ca)]
        if ip is not None and not name.replace(".", "").isdigit():
            command += ["--resolve", f"{name}:{port}:{ip}"]
        command += ["--interface", DIRECT if direct else CLIENT, *args, url]
        done = subprocess.run(command, capture_output=True, timeout=30)
        return Curl(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))

    def in_client(self, code: str, *, timeout: float = 60) -> str:
        """Python `code` run in the client namespace (resolving through the agentbox resolver); its stdout."""
        done = subprocess.run(
            [*self.client(), sys.executable, "-c", code], capture_output=True, timeout=timeout, check=True, cwd=ROOT
        )
        return done.stdout.decode()

    def getent(self, name: str) -> subprocess.CompletedProcess[str]:
        """`getent ahostsv4 NAME` in the client namespace: what glibc's resolver (as a workspace's) finds."""
        return subprocess.run([*self.client(), "getent", "ahostsv4", name], capture_output=True, text=True, timeout=30)

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
        shutil.rmtree(self.netns_etc, ignore_errors=True)


class World:
    """The stand-in internet for real workspaces: a namespace whose public-looking addresses (/32 routes from the
    host, nothing else of its routing changed) serve HTTP (80), HTTPS (443, 8443: the lab's upstream CA) and a TCP
    echo (7000), with the lab's upstream DNS server on its private end (`dns`), answering from `zone`. A
    server's resolver asks it (WORKSPACE_EGRESS_UPSTREAM_DNS) and its proxy trusts `upstream_ca`
    (WORKSPACE_EGRESS_UPSTREAM_CA). Shared by the egress tests over real workspaces."""

    NAMESPACE = "agentbox-test-egress-ws"
    ADDRESSES = ("198.51.100.91", "198.51.100.92")
    dns = "10.218.0.2"
    #: The host's end of the link (a /30 with `dns`) and the link's name (+ "0" host side, "1" inside): a
    #: subclass with other values (and addresses, namespace) runs beside this one.
    HOST_SIDE = "10.218.0.1"
    LINK = "abx-egws"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.upstream_ca, _cert, _key = _certificates(directory)
        self._process: subprocess.Popen[str] | None = None

    def zone(self, records: dict[str, list[str]]) -> None:
        zone = {name: {"a": addresses, "ttl": 30} for name, addresses in records.items()}
        (self.directory / "zone.json").write_text(json.dumps(zone))

    def requests(self) -> list[dict[str, Any]]:
        path = self.directory / "requests.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def __enter__(self) -> World:
        self._clean()
        inside = ["ip", "netns", "exec", self.NAMESPACE]
        try:
            _run("ip", "netns", "add", self.NAMESPACE)
            _run("ip", "link", "add", f"{self.LINK}0", "type", "veth", "peer", "name", f"{self.LINK}1")
            _run("ip", "link", "set", f"{self.LINK}1", "netns", self.NAMESPACE)
            _run("ip", "addr", "add", f"{self.HOST_SIDE}/30", "dev", f"{self.LINK}0")
            _run("ip", "link", "set", f"{self.LINK}0", "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "addr", "add", f"{self.dns}/30", "dev", f"{self.LINK}1")
            for address in self.ADDRESSES:
                _run(*inside, "ip", "addr", "add", f"{address}/32", "dev", f"{self.LINK}1")
                _run("ip", "route", "add", f"{address}/32", "via", self.dns)
            _run(*inside, "ip", "link", "set", f"{self.LINK}1", "up")
            _run(*inside, "ip", "route", "add", "default", "via", self.HOST_SIDE)
            self.zone({})
            self._process = subprocess.Popen(
                [*inside, sys.executable, "-m", "tests.egress_lab", "serve", str(self.directory), self.dns],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._process.stdout is not None
            if self._process.stdout.readline().strip() != "ready":
                raise RuntimeError("the egress world's servers did not start")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        self._clean()

    def _clean(self) -> None:
        for address in self.ADDRESSES:
            subprocess.run(["ip", "route", "del", f"{address}/32"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{self.LINK}0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.NAMESPACE], capture_output=True)


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
    #: Bare repositories served as GitHub serves them (root/OWNER/NAME.git), to the tokens in `tokens_path`.
    git_root: Path
    tokens_path: Path
    lock = threading.Lock()
    chunk = b"x" * BIG

    def do_GET(self) -> None:
        host = self.connection.getsockname()[0]
        record = {"host": self.headers.get("Host"), "path": self.path, "headers": dict(self.headers.items())}
        record["server"] = host
        with self.lock, self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        if (git := GIT_PATH.match(self.path)) is not None:
            self._git(*git.groups())
            return
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

    def _git(self, owner: str, repo: str, service: str, query: str | None) -> None:
        if not git_http.token_allows(self.headers.get("Authorization", ""), repo, Minted.read(self.tokens_path)):
            status, headers, payload = 401, {"WWW-Authenticate": 'Basic realm="GitHub"'}, b""
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # git sends small pushes whole
            status, headers, payload = git_http.serve(
                self.git_root,
                self.command,
                f"/{owner}/{repo}.git/{service}",
                query or "",
                self.headers.get("Content-Type", ""),
                self.headers.get("Content-Encoding", ""),
                body,
            )
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

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


class _Upstream(BaseResolver):  # type: ignore[misc]  # dnslib is untyped
    """The upstream DNS server: answers from the zone file as it is at each query, logs each query."""

    def __init__(self, directory: Path) -> None:
        self.zone_file, self.log_path = directory / "zone.json", directory / "dns.jsonl"
        self.lock = threading.Lock()
        self.concurrent = 0

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.concurrent += 1
            with self.log_path.open("a") as log:
                entry = {"name": name, "type": QTYPE[request.q.qtype], "concurrent": self.concurrent}
                log.write(json.dumps(entry) + "\n")
        try:
            if name.startswith("slow"):
                time.sleep(SLOW)
            return self._answer(request, name)
        finally:
            with self.lock:
                self.concurrent -= 1

    def _answer(self, request: DNSRecord, name: str) -> DNSRecord:
        zone = json.loads(self.zone_file.read_text())
        reply = request.reply()
        owner = name
        for _ in range(4):
            record = zone.get(owner) or next(
                (v for k, v in zone.items() if k.startswith("*.") and owner.endswith(k[1:])), None
            )
            if record is None:
                if owner == name:
                    reply.header.rcode = RCODE.NXDOMAIN
                return reply
            if "cname" in record:
                reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(record["cname"]), ttl=record["ttl"]))
                owner = record["cname"]
                continue
            if request.q.qtype == QTYPE.A:
                for address in record["a"]:
                    reply.add_answer(RR(owner, QTYPE.A, rdata=A(address), ttl=record["ttl"]))
            return reply
        return reply


def serve(directory: Path, dns_address: str = UPSTREAM_DNS) -> None:
    _Handler.log_path = directory / "requests.jsonl"
    _Handler.git_root, _Handler.tokens_path = directory / "git", directory / "github-tokens.jsonl"
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
    dns = _Upstream(directory)
    for tcp in (False, True):
        DNSServer(
            dns, address=dns_address, port=53, tcp=tcp, logger=DNSLogger("-request,-reply,-truncated")
        ).start_thread()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(Path(sys.argv[2]), *sys.argv[3:4])
