"""A policy workspace's traffic sent to the egress proxy and the resolver (providers/docker/egress_redirect.py).

Real gVisor workspaces made by a real server on a fenced network of this module's own; the redirect is
applied from the test (the server does not wire it yet). A network namespace stands for the internet: two
public addresses routed into it (/32 routes: nothing of the host's own routing changes), an HTTP server on
both, so a connection that escaped the redirect would be answered by "the world", never by the proxy, and
nothing leaves the machine. The proxy is a plain acceptor on the bridge's gateway that reads SO_ORIGINAL_DST
and says what it read; the resolver answers names under `egress.test` with a public address of the world.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import docker
import pytest

from agentbox.client import Client
from agentbox.providers.docker.egress_redirect import EgressRedirect, Endpoint
from agentbox.providers.docker.firewall import Firewall
from agentbox.providers.docker.network import mac_address
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import REJECTED, Server, answers, eventually, made, remove_network, sh

NETWORK = "agentbox-test-egress-net"
WORLD = "agentbox-test-egress-world"
DESTINATION, OTHER = "198.51.100.77", "198.51.100.78"  # public, routed into WORLD
WORLD_PRIVATE = "10.215.0.2"  # the world's end of its link: a private address, never redirected
NAME = "probe.egress.test"
ORIGINAL_DST = 80  # SO_ORIGINAL_DST, linux/netfilter_ipv4.h

# Run inside a workspace: for each "tcp:host:port" send an HTTP request and report the first line of what
# came back; for "udp:host:port" send a datagram and report the answer; else the errno's name, or "timeout".
PROBE = """
import errno, json, socket, sys
found = {}
for target in json.loads(sys.argv[1]):
    kind, host, port = target.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect((host, int(port)))
        sock.send(b"ping" if kind == "udp" else b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        found[target] = sock.recv(200).decode(errors="replace").splitlines()[0]
    except socket.timeout:
        found[target] = "timeout"
    except OSError as exc:
        found[target] = errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()
print(json.dumps(found))
"""
# Run inside a workspace: a lookup through its own resolv.conf (Docker's embedded DNS), and one query over
# TCP straight to a public address's port 53; prints both outcomes.
LOOKUP = """
import json, socket, struct, sys
out = {}
try:
    out["lookup"] = sorted({info[4][0] for info in socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)})
except OSError as exc:
    out["lookup"] = str(exc)
name = b"".join(bytes([len(part)]) + part.encode() for part in sys.argv[1].split(".")) + b"\\0"
query = b"\\x42\\x42\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00" + name + b"\\x00\\x01\\x00\\x01"
try:
    with socket.create_connection((sys.argv[2], 53), timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(query)) + query)
        answer = sock.recv(4096)[2:]
        out["tcp"] = socket.inet_ntoa(answer[-4:]) if answer[:2] == b"\\x42\\x42" else answer.hex()
except OSError as exc:
    out["tcp"] = str(exc)
print(json.dumps(out))
"""


@dataclass
class Services:
    """The stand-ins for the egress proxy and the resolver, on the bridge's gateway; what each saw."""

    gateway: str
    proxied: list[tuple[str, str]] = field(default_factory=list)  # (client address, original "ip:port")
    queried: list[tuple[str, str, str]] = field(default_factory=list)  # (client address, protocol, name)
    servers: list[socketserver.BaseServer] = field(default_factory=list)

    def start(self) -> Services:
        services = self

        class Proxy(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                raw = sock.getsockopt(socket.SOL_IP, ORIGINAL_DST, 16)
                port, address = struct.unpack_from("!2xH4s", raw)
                original = f"{socket.inet_ntoa(address)}:{port}"
                services.proxied.append((self.client_address[0], original))
                sock.sendall(f"proxied {original}\n".encode())

        class DatagramResolver(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(services.answer(self.client_address[0], "udp", data), self.client_address)

        class StreamResolver(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                (length,) = struct.unpack("!H", sock.recv(2))
                data = sock.recv(length)
                reply = services.answer(self.client_address[0], "tcp", data)
                sock.sendall(struct.pack("!H", len(reply)) + reply)

        for kind, handler in (
            (socketserver.ThreadingTCPServer, Proxy),
            (socketserver.ThreadingUDPServer, DatagramResolver),
        ):
            self.servers.append(kind((self.gateway, 0), handler))
        # The resolver's TCP side on the UDP side's port: one endpoint, as the rules have it.
        self.servers.append(socketserver.ThreadingTCPServer((self.gateway, self.resolver.port), StreamResolver))
        for server in self.servers:
            server.daemon_threads = True  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    @property
    def proxy(self) -> Endpoint:
        return Endpoint(IPv4Address(self.gateway), _port(self.servers[0]))

    @property
    def resolver(self) -> Endpoint:
        return Endpoint(IPv4Address(self.gateway), _port(self.servers[1]))

    def answer(self, client: str, protocol: str, query: bytes) -> bytes:
        """An A record of DESTINATION for names under egress.test; no address for anything else."""
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        end += 5  # the root label, type and class
        name = ".".join(labels)
        self.queried.append((client, protocol, name))
        ours = name.endswith("egress.test")
        is_a = query[end - 4 : end - 2] == b"\x00\x01"
        header = query[:2] + (b"\x81\x80" if ours else b"\x81\x83") + b"\x00\x01" + struct.pack("!H", ours and is_a)
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(DESTINATION)
        return header + b"\x00\x00\x00\x00" + query[12:end] + (record if ours and is_a else b"")

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def seen_from(self, address: str) -> list[str]:
        return [original for client, original in self.proxied if client == address]


def _port(server: socketserver.BaseServer) -> int:
    address = server.server_address
    assert isinstance(address, tuple)
    return int(address[1])


@pytest.fixture(scope="module")
def egress_world() -> Iterator[None]:
    """The stand-in internet: DESTINATION and OTHER (each an HTTP server on 8080) in their own namespace."""
    subprocess.run(["ip", "netns", "del", WORLD], capture_output=True)
    subprocess.run(["ip", "link", "del", "abx-egw0"], capture_output=True)
    routes = [["ip", "route", "del", f"{address}/32"] for address in (DESTINATION, OTHER)]
    for route in routes:
        subprocess.run(route, capture_output=True)
    inside = ["ip", "netns", "exec", WORLD]
    web = None
    try:
        sh("ip", "netns", "add", WORLD)
        sh("ip", "link", "add", "abx-egw0", "type", "veth", "peer", "name", "abx-egw1")
        sh("ip", "link", "set", "abx-egw1", "netns", WORLD)
        sh("ip", "addr", "add", "10.215.0.1/30", "dev", "abx-egw0")
        sh("ip", "link", "set", "abx-egw0", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "addr", "add", f"{WORLD_PRIVATE}/30", "dev", "abx-egw1")
        for address in (DESTINATION, OTHER):
            sh(*inside, "ip", "addr", "add", f"{address}/32", "dev", "abx-egw1")
            sh("ip", "route", "add", f"{address}/32", "via", WORLD_PRIVATE)
        sh(*inside, "ip", "link", "set", "abx-egw1", "up")
        sh(*inside, "ip", "route", "add", "default", "via", "10.215.0.1")
        web = subprocess.Popen(
            [*inside, sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        eventually(lambda: answers(f"http://{DESTINATION}:8080/"), timeout=20)
        yield
    finally:
        if web is not None:
            web.kill()
            web.wait()
        for route in routes:
            subprocess.run(route, capture_output=True)
        subprocess.run(["ip", "link", "del", "abx-egw0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", WORLD], capture_output=True)


@pytest.fixture(scope="module")
def egress_server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, egress_world: None
) -> Iterator[Server]:
    """A server whose workspaces live on this module's own fenced network."""
    remove_network(docker_client, NETWORK)
    # The server's own proxy off: this module installs the redirect itself, with stand-ins for the proxy.
    env = {"WORKSPACE_NETWORK_NAME": NETWORK, "WORKSPACE_EGRESS_PROXY": "false"}
    server = Server(tmp_path_factory.mktemp("egress"), env=env).start()
    try:
        yield server
    finally:
        server.stop()
        remove_network(docker_client, NETWORK)


@dataclass
class Pair:
    client: Client
    policy: WorkspaceOut  # granted only OTHER by the firewall (what a policy workspace's grant stands for)
    plain: WorkspaceOut  # the server's default: the public internet, no redirect
    policy_address: str
    plain_address: str


@pytest.fixture(scope="module")
def pair(egress_server: Server, docker_client: docker.DockerClient) -> Iterator[Pair]:
    def address(workspace: WorkspaceOut) -> str:
        settings = docker_client.api.inspect_container(f"agentbox-{workspace.id}")["NetworkSettings"]
        return str(settings["Networks"][NETWORK]["IPAddress"])

    with egress_server.client() as alice, made(alice, network={"allow": [OTHER]}) as policy, made(alice) as plain:
        yield Pair(alice, policy, plain, address(policy), address(plain))


@pytest.fixture(scope="module")
def services(egress_server: Server, docker_client: docker.DockerClient) -> Iterator[Services]:
    gateway = docker_client.api.inspect_network(NETWORK)["IPAM"]["Config"][0]["Gateway"]
    running = Services(str(gateway)).start()
    yield running
    running.stop()


@pytest.fixture
def redirect(services: Services, docker_client: docker.DockerClient) -> Iterator[EgressRedirect]:
    """The network's redirect chains, installed; gone after the test, checked."""
    firewall = Firewall.for_network(docker_client.api.inspect_network(NETWORK))
    chains = EgressRedirect.for_firewall(firewall, services.proxy, services.resolver)
    services.proxied.clear()
    services.queried.clear()
    chains.install()
    try:
        yield chains
    finally:
        chains.uninstall()
        assert ours(chains) == []


def ours(redirect: EgressRedirect) -> list[str]:
    """Every line of iptables-save (nat and filter) that names one of the redirect's chains."""
    names = (redirect.select_chain, redirect.rewrite_chain, redirect.accept_chain)
    listed = [
        subprocess.run(["iptables-save", "-t", t], capture_output=True, text=True).stdout for t in ("nat", "filter")
    ]
    return [line for text in listed for line in text.splitlines() if any(name in line for name in names)]


def probe(client: Client, workspace: WorkspaceOut, *targets: str) -> dict[str, str]:
    result = client.exec(workspace.id, ["python3", "-c", PROBE, json.dumps(targets)], timeout=120)
    assert result.exit_code == 0, result
    found = dict(json.loads(result.stdout))
    print(f"from {workspace.id}: {found}")  # shown on failure or with -s
    return found


def test_a_redirected_workspaces_tcp_reaches_the_proxy_with_its_original_destination(
    pair: Pair, services: Services, redirect: EgressRedirect
) -> None:
    redirect.add(mac_address(pair.policy.id), IPv4Address(pair.policy_address))
    redirect.add(mac_address(pair.policy.id), IPv4Address(pair.policy_address))  # again: nothing changes
    found = probe(pair.client, pair.policy, f"tcp:{DESTINATION}:8080", f"tcp:{OTHER}:443")
    assert found == {
        f"tcp:{DESTINATION}:8080": f"proxied {DESTINATION}:8080",
        f"tcp:{OTHER}:443": f"proxied {OTHER}:443",
    }
    assert services.seen_from(pair.policy_address) == [f"{DESTINATION}:8080", f"{OTHER}:443"]

    # The workspace without a policy reaches the world itself, and the proxy never hears of it.
    found = probe(pair.client, pair.plain, f"tcp:{DESTINATION}:8080")
    assert found[f"tcp:{DESTINATION}:8080"].startswith("HTTP/1.0 200"), found
    assert services.seen_from(pair.plain_address) == []


def test_a_redirected_workspaces_dns_reaches_the_resolver(
    pair: Pair, services: Services, redirect: EgressRedirect
) -> None:
    redirect.add(mac_address(pair.policy.id), IPv4Address(pair.policy_address))
    # Through the workspace's resolv.conf (Docker's embedded DNS, which asks from the workspace's own network
    # namespace) over UDP, and over TCP to an arbitrary public address: both reach the resolver.
    result = pair.client.exec(pair.policy.id, ["python3", "-c", LOOKUP, NAME, OTHER], timeout=120)
    assert result.exit_code == 0, result
    assert json.loads(result.stdout) == {"lookup": [DESTINATION], "tcp": DESTINATION}, result.stdout
    assert (pair.policy_address, "udp", NAME) in services.queried
    assert (pair.policy_address, "tcp", NAME) in services.queried

    plain = pair.client.exec(pair.plain.id, ["python3", "-c", LOOKUP, NAME, DESTINATION], timeout=120)
    assert DESTINATION not in plain.stdout  # its DNS goes where it always went
    assert [query for query in services.queried if query[0] == pair.plain_address] == []


def test_what_is_not_redirected_is_rejected_at_once(pair: Pair, services: Services, redirect: EgressRedirect) -> None:
    redirect.add(mac_address(pair.policy.id), IPv4Address(pair.policy_address))
    found = probe(
        pair.client,
        pair.policy,
        f"udp:{DESTINATION}:9999",  # not DNS: the firewall grants this workspace nothing there
        f"tcp:{WORLD_PRIVATE}:8080",  # a private range: never redirected, the firewall's to reject
        f"tcp:{services.gateway}:{services.proxy.port}",  # the proxy itself, not through the redirect
        f"udp:{services.gateway}:{services.resolver.port}",
    )
    assert all(outcome in REJECTED for outcome in found.values()), found  # an error at once, never "timeout"
    assert services.seen_from(pair.policy_address) == []
    # A workspace without a policy cannot use the proxy or the resolver on its own either (its secrets, its
    # answers belong to policy workspaces): the host's ports stay closed to it.
    found = probe(
        pair.client,
        pair.plain,
        f"tcp:{services.gateway}:{services.proxy.port}",
        f"udp:{services.gateway}:{services.resolver.port}",
    )
    assert all(outcome in REJECTED for outcome in found.values()), found
    assert services.seen_from(pair.plain_address) == []


def test_a_lost_chain_or_a_misplaced_jump_is_restored(pair: Pair, services: Services, redirect: EgressRedirect) -> None:
    redirect.add(mac_address(pair.policy.id), IPv4Address(pair.policy_address))
    # The workspace's rule flushed, and the INPUT jump put behind the firewall's (as the firewall's own repair
    # would leave it after losing only its jump): redirected connections would be rejected unanswered.
    sh("iptables", "-w", "5", "-t", "nat", "-F", redirect.select_chain)
    sh("iptables", "-w", "5", "-D", "INPUT", *redirect.hook("filter")[1].split())
    sh("iptables", "-w", "5", "-A", "INPUT", *redirect.hook("filter")[1].split())
    redirect.restore()
    found = probe(pair.client, pair.policy, f"tcp:{DESTINATION}:8080")
    assert found == {f"tcp:{DESTINATION}:8080": f"proxied {DESTINATION}:8080"}
    redirect.restore()  # nothing missing now: nothing written
    assert len(ours(redirect)) == len(set(ours(redirect)))  # and nothing doubled


def test_removal_leaves_the_workspace_unredirected_and_no_rule_behind(
    pair: Pair, services: Services, redirect: EgressRedirect
) -> None:
    mac = mac_address(pair.policy.id)
    redirect.add(mac, IPv4Address(pair.policy_address))
    redirect.remove(mac)
    redirect.remove(mac)  # again: nothing to do, and no error
    assert not any(mac in line.lower() for line in ours(redirect))
    found = probe(pair.client, pair.policy, f"tcp:{DESTINATION}:8080")
    assert found[f"tcp:{DESTINATION}:8080"] in REJECTED, found  # the firewall's: it is granted only OTHER
    assert services.seen_from(pair.policy_address) == []
    redirect.uninstall()
    assert ours(redirect) == []
    found = probe(pair.client, pair.plain, f"tcp:{DESTINATION}:8080")  # the world still answers this one
    assert found[f"tcp:{DESTINATION}:8080"].startswith("HTTP/1.0 200"), found
