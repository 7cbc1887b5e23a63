"""The helper channel over TCP (WORKSPACE_HELPER_CHANNEL=tcp) with real gVisor and runc workspaces: commands
and previews go over it, the key stays out of the workload's reach, and whatever does not prove the key
is refused, from every position that reaches the port (another workspace on Docker's default bridge,
the workload of the workspace itself, the host); on the fenced network no other workspace reaches it."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator

import docker
import httpx
import pytest

from agentbox.auth.tokens import server_secret
from agentbox.client import Client
from agentbox.sandbox.channel import Invocation
from agentbox.sandbox.control import encode_request
from agentbox.sandbox.handshake import ANSWER_BYTES, MAGIC, ClientHandshake, channel_key
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import KEYS, REJECTED, Server, eventually, probe, remove_network

PORT = 7633  # WORKSPACE_HELPER_PORT's default
FENCED_NETWORK = "agentbox-test-tcp-net"  # of its own: the fenced server of other modules has agentbox-test-net
MARKER = "/workspace/pwned"

# Run by a workload: one attempt on the helper's port; what came back, as JSON. `mode` is "missing" (the
# Unix socket's protocol straight away), or a handshake with the given opening and proof, then the request.
ATTACK = """
import json, socket, sys
host, port, mode, opening, proof, request = sys.argv[1:]
sock = socket.create_connection((host, int(port)), timeout=30)
answer, rest, error = b"", b"", None
try:
    if mode == "missing":
        sock.sendall(bytes.fromhex(request))
    else:
        sock.sendall(bytes.fromhex(opening))
        while len(answer) < 64:
            piece = sock.recv(64 - len(answer))
            if not piece:
                break
            answer += piece
        sock.sendall(bytes.fromhex(proof) + bytes.fromhex(request))
    while True:
        piece = sock.recv(4096)
        if not piece:
            break
        rest += piece
except OSError as exc:
    error = type(exc).__name__
print(json.dumps({"answer": len(answer), "rest": rest.decode("latin-1"), "error": error}))
"""


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that reaches its workspaces' helpers over TCP, its workspaces on Docker's default bridge
    (no fence: other workspaces reach the port, and only the key keeps them out)."""
    server = Server(tmp_path_factory.mktemp("tcp"), env={"WORKSPACE_HELPER_CHANNEL": "tcp"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fenced_tcp(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[Server]:
    """The same on the fenced workspace network."""
    remove_network(docker_client, FENCED_NETWORK)
    env = {"WORKSPACE_HELPER_CHANNEL": "tcp", "WORKSPACE_NETWORK_NAME": FENCED_NETWORK}
    server = Server(tmp_path_factory.mktemp("fenced-tcp"), env=env).start()
    yield server
    server.stop()
    remove_network(docker_client, FENCED_NETWORK)


@pytest.fixture(params=["gvisor", "docker"])
def victim(request: pytest.FixtureRequest, tcp_server: Server) -> Iterator[tuple[Client, WorkspaceOut]]:
    with tcp_server.client("alice") as alice:
        created = alice.create(provider=request.param)
        yield alice, created
        alice.delete(created.id)


def address_of(docker_client: docker.DockerClient, workspace_id: str) -> str:
    networks = docker_client.api.inspect_container(f"agentbox-{workspace_id}")["NetworkSettings"]["Networks"]
    (address,) = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
    return str(address)


def key_of(server: Server, workspace_id: str) -> bytes:
    """The workspace's channel key, as any replica derives it from the server's secret."""
    return channel_key(server_secret("", server.data_dir), workspace_id)


def exists(client: Client, workspace_id: str, path: str) -> bool:
    return client.exec(workspace_id, ["test", "-e", path]).exit_code == 0


def helper_connections(client: Client, workspace_id: str) -> str:
    """What this very command sees of the connections to the helper's port in the workspace (local port PORT,
    not the listener: state 0A): the command's own call, which came over TCP (in CLOSE_WAIT, state 08, since
    the host sent it no stdin)."""
    table = client.exec(workspace_id, "cat /proc/net/tcp").stdout
    port = f":{PORT:04X}"
    rows = [line.split() for line in table.splitlines()[1:]]
    return "\n".join(" ".join(row[:4]) for row in rows if row[1].endswith(port) and row[3] != "0A")


def test_commands_and_files_go_over_tcp(
    victim: tuple[Client, WorkspaceOut], docker_client: docker.DockerClient
) -> None:
    alice, workspace = victim
    assert helper_connections(alice, workspace.id), "the command did not come over the TCP channel"
    container = docker_client.api.inspect_container(f"agentbox-{workspace.id}")
    command = container["Config"]["Cmd"]
    assert command[command.index("-T") + 1] == str(PORT) and command[command.index("-U") + 1] == "1000:1000"
    alice.write_file(workspace.id, "/workspace/blob", data := secrets.token_bytes(3 << 20))
    assert alice.read_file(workspace.id, "/workspace/blob") == data
    result = alice.exec(workspace.id, 'echo "$HOME"; exit 7')
    assert (result.exit_code, result.stdout) == (7, "/home/agent\n")


def test_a_preview_goes_over_tcp_and_the_helpers_port_is_not_the_workloads(
    victim: tuple[Client, WorkspaceOut], tcp_server: Server
) -> None:
    alice, workspace = victim
    alice.exec(workspace.id, "echo previewed > /workspace/index.html")
    alice.start_process(workspace.id, ["python3", "-m", "http.server", "8000", "--directory", "/workspace"])
    assert eventually(lambda: 8000 in alice.listening_ports(workspace.id), timeout=30)
    assert PORT not in alice.listening_ports(workspace.id)  # agentbox's own listener: no preview of it
    url = f"{tcp_server.url}/api/v1/workspaces/{workspace.id}/ports/8000/index.html"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=30)
    assert (answer.status_code, answer.text) == (200, "previewed\n")


def test_the_key_is_root_s_alone_in_the_workspace(
    victim: tuple[Client, WorkspaceOut], tcp_server: Server, docker_client: docker.DockerClient
) -> None:
    alice, workspace = victim
    key = key_of(tcp_server, workspace.id).hex()
    me = alice.exec(workspace.id, "id -u; grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status | cut -f2 | xargs").stdout
    assert me.split() == ["1000", *["0000000000000000"] * 3]  # the workload: the user, no capability
    tries = "cat /.agentbox/secret/helper-key; ls /.agentbox/secret; head -c 1 /proc/1/mem; head -c 1 /proc/$PPID/mem"
    refused = alice.exec(workspace.id, f"{{ {tries}; }} 2>&1").stdout
    assert refused.count("Permission denied") == 4, refused
    assert key not in refused
    # Nowhere the workload can read (its files, its environment, init's), nor in the container's description.
    alice.write_file(workspace.id, "/tmp/needle", key.encode())
    found = alice.exec(
        workspace.id,
        "grep -rl -F -f /tmp/needle / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; "
        "cat /proc/1/environ /proc/self/environ 2>/dev/null | grep -c -F -f /tmp/needle; rm /tmp/needle",
        timeout=300,
    ).stdout
    assert found.split() == ["/tmp/needle", "0"], found
    assert key not in json.dumps(docker_client.api.inspect_container(f"agentbox-{workspace.id}"))
    on_host = tcp_server.data_dir / "secrets" / workspace.id / "helper-key"
    assert on_host.read_text().strip() == key and on_host.stat().st_mode & 0o777 == 0o400
    assert (on_host.parent.stat().st_mode & 0o777, on_host.stat().st_uid) == (0o700, 0)


def test_a_workspace_without_network_keeps_the_socket(tcp_server: Server, docker_client: docker.DockerClient) -> None:
    with tcp_server.client("alice") as alice:
        created = alice.create(network="none")
        try:
            assert alice.exec(created.id, "echo over the socket").stdout == "over the socket\n"
            container = docker_client.api.inspect_container(f"agentbox-{created.id}")
            assert "-T" not in container["Config"]["Cmd"] and "-S" in container["Config"]["Cmd"]
            assert container["Config"]["User"] == "1000:1000"  # no key, so no start as root
            assert not (tcp_server.data_dir / "secrets" / created.id).exists()
        finally:
            alice.delete(created.id)
    assert not (tcp_server.data_dir / "secrets" / created.id).exists()


def attempt(server: Server, docker_client: docker.DockerClient, workspace_id: str, credential: str) -> list[str]:
    """An attack's arguments for ATTACK after host and port: a missing, a wrong or a replayed credential, each
    with a request that would make MARKER.

    The replay is of a whole genuine session, recorded here (the host knows the key), whose request made
    the marker: the caller removes it, and the replay sends the same bytes again.
    """
    request = encode_request(Invocation(["run", "--", "/bin/sh", "-c", f"touch {MARKER}"], cwd="/"))
    if credential == "missing":
        return ["missing", "", "", request.hex()]
    if credential == "wrong":
        return ["handshake", (MAGIC + secrets.token_bytes(32)).hex(), secrets.token_bytes(32).hex(), request.hex()]
    genuine = ClientHandshake(key_of(server, workspace_id), workspace_id)
    with socket.create_connection((address_of(docker_client, workspace_id), PORT), timeout=30) as sock:
        sock.sendall(genuine.opening())
        proof = genuine.answer(sock.recv(ANSWER_BYTES, socket.MSG_WAITALL))
        sock.sendall(proof + request)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # the genuine call's hello and frames, to its end
            pass
    return ["handshake", genuine.opening().hex(), proof.hex(), request.hex()]


def attack_from_host(address: str, arguments: list[str]) -> dict[str, object]:
    """ATTACK, run here."""
    mode, opening, proof, request = arguments
    answer, rest, error = b"", b"", None
    with socket.create_connection((address, PORT), timeout=30) as sock:
        try:
            if mode == "missing":
                sock.sendall(bytes.fromhex(request))
            else:
                sock.sendall(bytes.fromhex(opening))
                answer = sock.recv(ANSWER_BYTES, socket.MSG_WAITALL)
                sock.sendall(bytes.fromhex(proof) + bytes.fromhex(request))
            while piece := sock.recv(4096):
                rest += piece
        except OSError as exc:
            error = type(exc).__name__
    return {"answer": len(answer), "rest": rest.decode("latin-1"), "error": error}


@pytest.mark.parametrize("position", ["another workspace", "the workspace itself", "the host"])
def test_a_missing_wrong_or_replayed_credential_is_refused(
    victim: tuple[Client, WorkspaceOut], tcp_server: Server, docker_client: docker.DockerClient, position: str
) -> None:
    alice, workspace = victim
    with tcp_server.client("bob") as bob:
        attacker = bob.create(provider=workspace.provider) if position == "another workspace" else None
        try:
            for credential in ("missing", "wrong", "replayed"):
                arguments = attempt(tcp_server, docker_client, workspace.id, credential)
                if credential == "replayed":
                    assert exists(alice, workspace.id, MARKER)  # the recorded session ran its command
                    alice.exec(workspace.id, f"rm {MARKER}")
                if position == "the host":
                    seen = attack_from_host(address_of(docker_client, workspace.id), arguments)
                else:
                    client, where = (bob, attacker.id) if attacker is not None else (alice, workspace.id)
                    host = address_of(docker_client, workspace.id) if attacker is not None else "127.0.0.1"
                    result = client.exec(where, ["python3", "-c", ATTACK, host, str(PORT), *arguments], timeout=120)
                    assert result.exit_code == 0, result
                    seen = json.loads(result.stdout)
                print(f"a {credential} credential from {position}: {seen}")
                # At most the helper's own nonce and proof, then the end: no hello, no frame, no output.
                assert seen["answer"] == (0 if credential == "missing" else ANSWER_BYTES), seen
                assert seen["rest"] == "", seen
                assert not exists(alice, workspace.id, MARKER), f"a {credential} credential ran a command"
        finally:
            if attacker is not None:
                bob.delete(attacker.id)
    assert alice.exec(workspace.id, "echo still served").stdout == "still served\n"


@pytest.mark.parametrize("provider", ["gvisor", "docker"])
def test_on_the_fenced_network_no_other_workspace_reaches_the_port(
    fenced_tcp: Server, docker_client: docker.DockerClient, provider: str
) -> None:
    with fenced_tcp.client("alice") as alice:
        victim, other = alice.create(provider=provider), alice.create(provider=provider)
        try:
            assert helper_connections(alice, victim.id), "the server's command did not come over TCP"
            target = f"{address_of(docker_client, victim.id)}:{PORT}"
            found = probe(alice, other.id, target)
            assert found[target] in REJECTED, found
            # ...while the workload reaches its own helper's port, where the key is what keeps it out.
            assert probe(alice, victim.id, f"127.0.0.1:{PORT}")[f"127.0.0.1:{PORT}"] == "connected"
        finally:
            alice.delete(victim.id)
            alice.delete(other.id)


def test_the_helper_comes_back_on_its_port_after_a_stop_and_a_start(
    victim: tuple[Client, WorkspaceOut], docker_client: docker.DockerClient
) -> None:
    alice, workspace = victim
    alice.stop(workspace.id)
    alice.start(workspace.id)
    assert helper_connections(alice, workspace.id), "after a start, commands no longer come over TCP"
