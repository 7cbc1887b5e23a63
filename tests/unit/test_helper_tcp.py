"""The helper channel over TCP: its handshake as pure logic, then the real helper refusing what does not prove
the workspace's key (no Docker: the helper runs here as a workspace's init; tests/integration/test_helper_tcp.py
does the same from inside real workspaces)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox.sandbox import build
from agentbox.sandbox.channel import HelperChannel, Invocation
from agentbox.sandbox.control import ControlSocketError, encode_request
from agentbox.sandbox.handshake import (
    ANSWER_BYTES,
    MAGIC,
    ClientHandshake,
    HandshakeRefused,
    ListenerHandshake,
    channel_key,
    client_proof,
    key_file_text,
    listener_proof,
)
from agentbox.sandbox.runtime import ExecRequest, collect
from agentbox.sandbox.tcp import TcpTransport

from .test_control_socket import free_port, listening

# ---- the handshake, pure logic ------------------------------------------------------------------


def test_both_sides_prove_the_key_on_each_others_fresh_nonce() -> None:
    key = secrets.token_bytes(32)
    client, listener = ClientHandshake(key, "ws-a"), ListenerHandshake(key, "ws-a")
    answer = listener.reply(client.opening())
    proof = client.answer(answer)
    assert listener.admits(proof)
    assert client.opening() == MAGIC + client.nonce and len(answer) == ANSWER_BYTES
    # What each proof is, written out: HMAC-SHA256 over its label, the id, and both nonces.
    message = b"ws-a\0" + client.nonce + listener.nonce
    assert proof == hmac.new(key, b"agentbox-helper-channel-1 client" + message, hashlib.sha256).digest()
    assert answer[32:] == hmac.new(key, b"agentbox-helper-channel-1 listener" + message, hashlib.sha256).digest()


@pytest.mark.parametrize("who", ["another key", "another workspace"])
def test_a_listener_that_cannot_prove_the_key_gets_no_proof_from_the_client(who: str) -> None:
    key = secrets.token_bytes(32)
    client = ClientHandshake(key, "ws-a")
    impostor = (
        ListenerHandshake(secrets.token_bytes(32), "ws-a") if who == "another key" else ListenerHandshake(key, "ws-b")
    )
    with pytest.raises(HandshakeRefused, match="without proof"):
        client.answer(impostor.reply(client.opening()))


def test_a_replayed_client_proof_fails_against_the_listeners_fresh_nonce() -> None:
    key = secrets.token_bytes(32)
    recorded = ClientHandshake(key, "ws-a")
    first = ListenerHandshake(key, "ws-a")
    proof = recorded.answer(first.reply(recorded.opening()))
    assert first.admits(proof)
    again = ListenerHandshake(key, "ws-a")  # a new connection: a new nonce
    again.reply(recorded.opening())  # the attacker replays the recorded opening...
    assert not again.admits(proof)  # ...and the recorded proof


def test_a_replayed_listener_answer_fails_against_the_clients_fresh_nonce() -> None:
    key = secrets.token_bytes(32)
    recorded = ListenerHandshake(key, "ws-a").reply(ClientHandshake(key, "ws-a").opening())
    with pytest.raises(HandshakeRefused):
        ClientHandshake(key, "ws-a").answer(recorded)


def test_what_the_listener_answers_a_stranger_is_never_a_client_proof() -> None:
    # An attacker opens with a nonce of its choice and gets the listener's proof over it: the same HMAC
    # but for the label, so it cannot pass for a host's proof, on this connection or on any other.
    key = secrets.token_bytes(32)
    listener = ListenerHandshake(key, "ws-a")
    answer = listener.reply(MAGIC + bytes(32))
    assert not listener.admits(answer[32:])
    assert answer[32:] != client_proof(key, "ws-a", bytes(32), listener.nonce)


@pytest.mark.parametrize("answer", [b"", b"x" * 63, b"x" * 65])
def test_an_answer_of_another_length_is_refused(answer: bytes) -> None:
    with pytest.raises(HandshakeRefused, match="bytes where the helper sends 64"):
        ClientHandshake(secrets.token_bytes(32), "ws-a").answer(answer)


def test_a_listener_admits_nothing_before_an_opening() -> None:
    key = secrets.token_bytes(32)
    assert not ListenerHandshake(key, "ws-a").admits(client_proof(key, "ws-a", bytes(32), bytes(32)))
    with pytest.raises(HandshakeRefused):
        ListenerHandshake(key, "ws-a").reply(b"AGX1" + bytes(32))


def test_channel_keys_are_per_workspace_and_per_secret_and_never_change() -> None:
    secret = b"s" * 32
    assert channel_key(secret, "ws-a") == channel_key(secret, "ws-a")  # what every replica derives
    assert channel_key(secret, "ws-a") != channel_key(secret, "ws-b")
    assert channel_key(b"t" * 32, "ws-a") != channel_key(secret, "ws-a")
    # Pinned: a derivation that changed would lock every existing workspace out of its channel.
    assert channel_key(secret, "ws-0123456789abcdef").hex() == (
        hmac.new(secret, b"helper-channel:ws-0123456789abcdef", hashlib.sha256).hexdigest()
    )
    assert key_file_text(bytes(range(32))) == bytes(range(32)).hex().encode() + b"\n"


def test_proofs_cover_the_nonces_in_order() -> None:
    key, a, b = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)
    assert listener_proof(key, "ws-a", a, b) != listener_proof(key, "ws-a", b, a)
    assert client_proof(key, "ws-a", a, b) != client_proof(key, "ws-a", b, a)


# ---- the real helper ----------------------------------------------------------------------------

if not (shutil.which("cc") or shutil.which("gcc")):
    pytest.skip("no C compiler (cc) on PATH; cannot build agentbox-exec", allow_module_level=True)


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build(tmp_path_factory.mktemp("helper") / "agentbox-exec", strict=True))


class Helper:
    """The helper's init with the TCP channel on a loopback port, its key, and a marker a command may make."""

    def __init__(self, binary: str, directory: Path, workspace_id: str = "ws-a", *extra: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.workspace_id = workspace_id
        self.key = secrets.token_bytes(32)
        self.port = free_port()
        self.key_file = directory / "helper-key"
        self.key_file.write_bytes(key_file_text(self.key))
        self.key_file.chmod(0o400)
        self.marker = directory / "ran"
        argv = [binary, "init", "-I", workspace_id, "-K", str(self.key_file), "-T", str(self.port), *extra]
        self.process = subprocess.Popen(argv, cwd=directory, env={**os.environ, "WHO": workspace_id})
        deadline = time.monotonic() + 5
        while not listening(self.port):
            assert time.monotonic() < deadline, "the helper never listened"
            time.sleep(0.01)

    def channel(self, key: bytes | None = None) -> HelperChannel:
        return HelperChannel(TcpTransport(self.workspace_id, key or self.key, self.port, lambda fresh: "127.0.0.1"))

    def run(self, script: str, key: bytes | None = None) -> tuple[int, str]:
        request = ExecRequest(argv=["/bin/sh", "-c", script], cwd=str(self.directory))
        result = collect(self.channel(key).exec_stream(request), 1 << 20)
        return result.exit_code, result.stdout

    def touch_request(self) -> bytes:
        """A request that would make the marker, as the host sends it after its proof."""
        return encode_request(Invocation(["run", "--", "/bin/sh", "-c", f"touch {self.marker}"], cwd="/"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


@pytest.fixture
def tcp_helper(helper: str, tmp_path: Path) -> Iterator[Helper]:
    running = Helper(helper, tmp_path / "a")
    yield running
    running.stop()


def attack(port: int, send: bytes, then: bytes = b"") -> tuple[bytes, bytes]:
    """Connect, send `send`, read the helper's answer (whatever comes within 5 s, up to 64 bytes), send
    `then`; return the answer and whatever else came until the helper closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(send)
        answer = b""
        sock.settimeout(5)
        try:
            while len(answer) < ANSWER_BYTES and (piece := sock.recv(ANSWER_BYTES - len(answer))):
                answer += piece
        except (TimeoutError, ConnectionResetError):  # reset: closed with what was sent unread
            pass
        rest = b""
        sock.settimeout(30)  # the helper closes at the latest at the end of its handshake window (10 s)
        try:
            if then:
                sock.sendall(then)
            while piece := sock.recv(4096):
                rest += piece
        except (ConnectionResetError, BrokenPipeError):
            pass
    return answer, rest


def test_the_channel_works_with_the_key(tcp_helper: Helper) -> None:
    assert tcp_helper.run('echo "$WHO"; exit 3') == (3, "ws-a\n")


def test_a_wrong_key_is_refused_before_any_request(tcp_helper: Helper) -> None:
    with pytest.raises(ControlSocketError, match="without proof"):
        tcp_helper.run(f"touch {tcp_helper.marker}", key=secrets.token_bytes(32))
    assert not tcp_helper.marker.exists()


@pytest.mark.parametrize("credential", ["missing", "wrong", "replayed"])
def test_a_connection_without_a_good_credential_sees_nothing_and_runs_nothing(
    tcp_helper: Helper, credential: str
) -> None:
    request = tcp_helper.touch_request()
    if credential == "missing":  # the Unix socket's protocol, straight away
        answer, rest = attack(tcp_helper.port, request)
        assert answer == b""
    else:
        opening = MAGIC + secrets.token_bytes(32)
        if credential == "replayed":  # a whole genuine session, recorded, then sent again as it was
            recorded = ClientHandshake(tcp_helper.key, "ws-a")
            with socket.create_connection(("127.0.0.1", tcp_helper.port), timeout=30) as genuine:
                genuine.sendall(recorded.opening())
                proof = recorded.answer(genuine.recv(ANSWER_BYTES, socket.MSG_WAITALL))
                genuine.sendall(proof + request)
                genuine.shutdown(socket.SHUT_WR)
                assert b"AGX1 ws-a\n" in genuine.recv(100, socket.MSG_WAITALL)  # the genuine call ran
                while genuine.recv(4096):
                    pass
            assert tcp_helper.marker.exists()
            tcp_helper.marker.unlink()
            opening = recorded.opening()
        else:
            proof = secrets.token_bytes(32)
        answer, rest = attack(tcp_helper.port, opening, proof + request)
        assert len(answer) == ANSWER_BYTES  # the helper's nonce and proof: nothing of a call
    assert rest == b"", "the helper said more than its handshake to a connection without the key"
    time.sleep(0.2)  # anything run would have made the marker by now
    assert not tcp_helper.marker.exists()
    assert tcp_helper.run("echo still serving") == (0, "still serving\n")


def test_a_silent_connection_is_closed_unserved(tcp_helper: Helper) -> None:
    with socket.create_connection(("127.0.0.1", tcp_helper.port), timeout=30) as sock:
        assert sock.recv(100) == b""  # closed by the helper at the end of its handshake window


def test_silent_connections_cost_the_helper_a_bounded_number_of_processes(tcp_helper: Helper) -> None:
    def children(pid: int) -> list[str]:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()

    deadline = time.monotonic() + 10
    while not children(tcp_helper.process.pid):  # init forks its server once it listens
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server = int(children(tcp_helper.process.pid)[0])

    def workers() -> int:
        return len(children(server))

    silent = [socket.create_connection(("127.0.0.1", tcp_helper.port)) for _ in range(30)]
    try:
        time.sleep(1)  # time for the helper to fork whatever it will
        # Two spares, eight in a handshake: past that no more processes, whatever connects.
        assert workers() <= 2 + 8
    finally:
        for sock in silent:
            sock.close()
    assert tcp_helper.run("echo served after them") == (0, "served after them\n")


def test_a_listener_that_does_not_know_the_key_learns_nothing_of_the_request(tcp_helper: Helper) -> None:
    # A workload that got the port (or an address that now leads elsewhere): it answers the opening with
    # whatever it likes; the host then sends nothing more.
    impostor = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def answer_badly() -> None:
        connection, _ = impostor.accept()
        with connection:
            connection.settimeout(5)
            received.extend(connection.recv(4096))
            connection.sendall(secrets.token_bytes(ANSWER_BYTES))
            try:
                while piece := connection.recv(4096):
                    received.extend(piece)
            except (TimeoutError, ConnectionResetError):
                pass

    thread = threading.Thread(target=answer_badly)
    thread.start()
    port = impostor.getsockname()[1]
    transport = TcpTransport("ws-a", tcp_helper.key, port, lambda fresh: "127.0.0.1")
    secret_env = {"TOKEN": "do-not-leak"}
    with pytest.raises(ControlSocketError, match="without proof"):
        transport.call(Invocation(["run", "--", "true"], env=secret_env))
    thread.join()
    impostor.close()
    assert len(received) == 36 and received.startswith(MAGIC)  # the opening, nothing else


def test_an_address_that_now_leads_to_another_workspace_is_looked_up_again(helper: str, tmp_path: Path) -> None:
    a, b = Helper(helper, tmp_path / "a", "ws-a"), Helper(helper, tmp_path / "b", "ws-b")
    try:
        looked: list[bool] = []

        def addresses(fresh: bool) -> str:
            looked.append(fresh)
            return "127.0.0.1" if fresh else "127.0.0.2"

        # ws-a's transport: the address it remembers (127.0.0.2 here) now leads to ws-b's helper.
        ports = {"127.0.0.2": b.port, "127.0.0.1": a.port}

        class Moving(TcpTransport):
            def _open_at(self, address: str) -> socket.socket:
                self.port = ports[address]
                return super()._open_at(address)

        channel = HelperChannel(Moving("ws-a", a.key, a.port, addresses))
        found = collect(channel.exec_stream(ExecRequest(argv=["/bin/sh", "-c", 'echo "$WHO"'], cwd="/")), 100)
        assert found.stdout == "ws-a\n" and looked == [False, True]
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("problem", ["readable by others", "not 64 hex digits"])
def test_a_key_file_that_proves_nothing_turns_the_listener_off(helper: str, tmp_path: Path, problem: str) -> None:
    key_file = tmp_path / "helper-key"
    key_file.write_bytes(key_file_text(secrets.token_bytes(32)) if problem == "readable by others" else b"x" * 64)
    key_file.chmod(0o444 if problem == "readable by others" else 0o400)
    port = free_port()
    init = subprocess.Popen(
        [helper, "init", "-S", str(tmp_path / "control.sock"), "-I", "ws-a", "-K", str(key_file), "-T", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert init.stdout is not None and init.stderr is not None
        assert init.stdout.readline() == b"agentbox-exec ready\n"  # the rest of the helper works
        assert problem.encode() in init.stderr.readline()  # and it says why it does not listen
        assert not listening(port)
    finally:
        init.terminate()
        init.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="init drops from root to the workspace's user")
def test_init_reads_the_key_as_root_then_nothing_of_the_workload_can(helper: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="agentbox-test-"))  # where uid 1000 may go (pytest's are 0700)
    directory.chmod(0o755)
    running = Helper(helper, directory, "ws-a", "-U", "1000:1000")
    try:
        own = 'id -u; id -G; grep -E "^Cap(Prm|Eff|Bnd)" /proc/self/status | cut -f2 | xargs'
        steal = "{{ cat {key}; head -c 1 /proc/{pid}/mem; head -c 1 /proc/$PPID/mem; cat /proc/$PPID/environ; }}"
        code, out = running.run(own + "; " + steal.format(key=running.key_file, pid=running.process.pid) + " 2>&1")
        lines = out.splitlines()
        assert lines[:3] == ["1000", "1000", "0000000000000000 0000000000000000 0000000000000000"]
        assert running.key.hex() not in out
        assert out.count("Permission denied") == 4, out  # the key file, init's and its worker's memory and env
        assert code != 0
    finally:
        running.stop()
        shutil.rmtree(directory)
