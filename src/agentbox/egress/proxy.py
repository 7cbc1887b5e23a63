"""The transparent egress proxy: every redirected TCP connection is allowed, refused or intercepted by name.

A workspace's TCP arrives here by an iptables REDIRECT (so git, pip and curl need no proxy settings);
the original destination comes from SO_ORIGINAL_DST, the workspace from the source address, its policy
from a `PolicyTable` the server changes at run time (a change applies to the next connection). The
first bytes are peeked, never consumed: TLS is matched on its SNI (read by OpenSSL itself, from a
throw-away server-side `ssl.SSLObject` whose SNI callback stops the handshake), plain HTTP on `Host`,
anything else (nothing sent within `peek_timeout`: a server-speaks-first protocol) by address and port.

- refused: TLS and other TCP get a reset at once, plain HTTP a 403 with a one-line body; a `Refusal`
  goes to `on_refusal` (the server's audit trail);
- allowed: the bytes are relayed as they are (TLS is never decrypted), to the original address;
- allowed by a name entry (an SNI or a Host the policy lists): only when that original address is
  one the agentbox resolver (resolver.py) gave this client for that name, its TTL plus a grace not
  over (`answers`, naming.check); otherwise refused like any other, the Refusal saying why. Else a
  workspace allowed `a.example` would reach every address on earth by sending that SNI.
- allowed with header rules for the name (TLS only): the proxy terminates TLS with a leaf from the
  server's CA (ca.py), opens TLS to the original address verifying the upstream's certificate for the
  name, and sets the rule's headers on each request, filling `${e2b.secrets.NAME}` from
  `resolve_secrets` per request. Responses are relayed as they are.
- allowed to a GitHub grant's host (TLS only; plain HTTP there is refused): intercepted the same way,
  each request let through only into the grant's repositories (else a 403 and a Refusal), with the
  App's installation token, asked for per request as the secret `github:APP`, as git sends it.

Why check the dialled address rather than resolve the name here and connect where it leads: the
connection goes exactly where the workspace meant (the address it picked among several, the one
its own retry chose), no lookup sits on the way of a connection (the pass-through budget is +2 ms
to the first byte), and the answer memory is a dictionary read. Its cost: a client that keeps an
address past its TTL plus the grace (30 s by default, the JVM's own cache time) or that resolves
otherwise (DNS over HTTPS, its own hosts file) is refused; a refusal it can see, recorded with why.
With `answers` None (a proxy used without the resolver) names are trusted as they come; the
proxy's process (child.py) always passes one, so there a name rule without the resolver allows
nothing.

Why not mitmproxy (the first candidate): its last release for Python 3.11 (11.0.2; 12.x needs 3.12)
pins cryptography < 44.1, h11 <= 0.14 and a dozen more upper bounds that conflict with this project's
pins (cryptography 50, h11 0.16 under httpx and uvicorn); it cannot be installed into the server's
environment. proxy.py (the second) has no transparent mode (it is an explicit HTTP/CONNECT proxy) and
mints certificates with the openssl command. What is used instead is all maintained: OpenSSL through
the standard library's `ssl` (TLS both ways and SNI parsing), `cryptography` (the CA), `h11` (HTTP/1.1
request parsing on intercepted connections), asyncio for the relay. No TLS or HTTP parser is written
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

import h11

from agentbox.egress.answers import AnswerMemory
from agentbox.egress.ca import LeafMinter
from agentbox.egress.naming import check
from agentbox.egress.rules import (
    DENY_ALL,
    Decision,
    Policy,
    fill,
    github_authorization,
    github_token_name,
    normalize_name,
    secret_names_in,
)

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
MAX_PEEK = 16384
_RELAY_BUFFER = 256 * 1024
_PIPE = 1 << 20
_F_SETPIPE_SZ = 1031  # linux/fcntl.h
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_HTTP_START = re.compile(rb"^[A-Z]{1,16} \S+ HTTP/1\.[01]\r\n")
_METHOD_PREFIX = re.compile(rb"^[A-Z]{0,16}$")
_FORBIDDEN_BODY = b"agentbox egress: this destination is not allowed for this workspace\n"

Protocol = Literal["tls", "http", "tcp", "dns"]
SecretResolver = Callable[[str, str, list[str]], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class Refusal:
    """One refused connection (or request, or name lookup: protocol "dns", ip ""), as the audit trail records it."""

    client: str
    name: str | None
    ip: str
    port: int
    protocol: Protocol
    rule: str
    at: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class RefusalBudget:
    """How many refusals of one client (workspace) a second go on to the audit trail: one that retries refused
    destinations in a loop must not write a record each time. The rest are counted (`dropped` in the channel).
    Memory: one count per client that had a refusal this second."""

    def __init__(self, per_client: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client = per_client
        self._clock = clock
        self._second = -1
        self._counts: dict[str, int] = {}

    def allows(self, refusal: Refusal) -> bool:
        second = int(self._clock())
        if second != self._second:
            self._second, self._counts = second, {}
        count = self._counts.get(refusal.client, 0)
        if count >= self.per_client:
            return False
        self._counts[refusal.client] = count + 1
        return True


class PolicyTable:
    """Policies by client (workspace) address. A client with none is refused everything (fail closed)."""

    def __init__(self) -> None:
        self._policies: dict[str, Policy] = {}

    def set(self, client: str, policy: Policy | None) -> None:
        if policy is None:
            self._policies.pop(client, None)
        else:
            self._policies[client] = policy

    def get(self, client: str) -> Policy:
        return self._policies.get(client, DENY_ALL)

    def __len__(self) -> int:
        return len(self._policies)


def read_sni(data: bytes) -> str | Literal[False] | None:
    """The SNI of a TLS ClientHello (None: it has none), or False when `data` holds no complete one yet.

    Raises ValueError when `data` is not a TLS ClientHello at all.
    """
    found: list[str | None] = []

    def stop(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int:
        found.append(name)
        return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR  # stop the handshake here: the name is all we want

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sni_callback = stop
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    probe = context.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(data)
    try:
        probe.do_handshake()
    except ssl.SSLWantReadError:
        if found:
            return found[0]
        return False
    except ssl.SSLError as error:
        if found:
            return found[0]
        raise ValueError(str(error)) from None
    return found[0] if found else None


def classify(data: bytes, final: bool) -> tuple[Protocol, str | None] | None:
    """(protocol, name) of a connection that sent `data` first, or None when more bytes are needed.

    `final`: no more bytes will be waited for (the peek timed out, the peer closed, or the peek is full).
    """
    if not data:
        return ("tcp", None) if final else None
    if data[0] == 0x16:
        try:
            sni = read_sni(data)
        except ValueError:
            return "tcp", None
        if sni is False:
            return ("tcp", None) if final else None
        return "tls", sni
    if _HTTP_START.match(data):
        head, sep, _ = data.partition(b"\r\n\r\n")
        if not sep and not final:
            return None
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"host":
                return "http", _host_name(value.strip().decode("latin-1"))
        return "http", None
    first_line = data.split(b"\r\n", 1)[0]
    if not final and b"\r\n" not in data and _METHOD_PREFIX.match(first_line.split(b" ", 1)[0]):
        return None
    return "tcp", None


def _host_name(host: str) -> str | None:
    if host.startswith("["):
        return None  # an IPv6 literal: no name
    return normalize_name(host.rsplit(":", 1)[0] if ":" in host else host)


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed connection was going (SO_ORIGINAL_DST: a sockaddr_in)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): the client's connect or first read fails at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _ready(sock: socket.socket, write: bool) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    (loop.add_writer if write else loop.add_reader)(sock.fileno(), _set_once, future)
    try:
        await future
    finally:
        (loop.remove_writer if write else loop.remove_reader)(sock.fileno())


async def _pump(source: socket.socket, sink: socket.socket) -> None:
    """`source` to `sink` until `source`'s end, then `sink`'s write side shut (the half-close passed on)."""
    out, into = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(into, _F_SETPIPE_SZ, _PIPE)
        while True:
            try:
                pending = os.splice(source.fileno(), into, _PIPE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await _ready(source, write=False)
                continue
            if pending == 0:
                break
            while pending:  # the pipe is emptied before the next read: a read never finds it full
                try:
                    pending -= os.splice(out, sink.fileno(), pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await _ready(sink, write=True)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
    finally:
        os.close(out)
        os.close(into)


class _Pipe(asyncio.BufferedProtocol):
    """One direction of a relay: what this side receives is written to the peer, with back-pressure."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray(_RELAY_BUFFER)
        self._view = memoryview(self._buffer)
        self._done = done
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # until both sides exist (`start`)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        assert self.peer is not None and self.peer.transport is not None
        # A copy: a transport may keep what it could not send yet, and this buffer is reused.
        self.peer.transport.write(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer is not None and peer.eof:
            self._close_both()
        return True  # keep the other direction open (half-close)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if (peer is None or peer.closed) and not self._done.done():
            self._done.set_result(None)

    def _close_both(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()


#: How many clients' last limit refusal times are kept (then forgotten at once: a bound, not a cache).
LIMIT_REPORTS_KEPT = 4096


class EgressProxy:
    """The engine: accepts REDIRECTed connections on one address and serves them by `table`."""

    def __init__(
        self,
        table: PolicyTable,
        *,
        minter: LeafMinter | None = None,
        resolve_secrets: SecretResolver | None = None,
        on_refusal: Callable[[Refusal], None] | None = None,
        upstream_context: ssl.SSLContext | None = None,
        peek_timeout: float = 1.0,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        max_connections: int = 4096,
        max_client_connections: int = 512,
        answers: AnswerMemory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self._answers = answers
        self._clock = clock
        self._minter = minter
        self._resolve = resolve_secrets
        self._on_refusal = on_refusal or (lambda _r: None)
        self._upstream = upstream_context or ssl.create_default_context()
        self._peek_timeout = peek_timeout
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._max = max_connections
        self._max_client = max_client_connections
        #: client -> its connections being served (only clients with one: the table never holds idle clients).
        self._per_client: dict[str, int] = {}
        #: client -> when its last refusal for a limit was reported (one a second says the limit is being hit;
        #: one a connection past it would say nothing more); cleared whole past LIMIT_REPORTS_KEPT clients.
        self._limit_reported: dict[str, float] = {}
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> tuple[str, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        self.address = listener.getsockname()
        self._accepting = asyncio.create_task(self._accept_loop())
        return self.address

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(self._listener)
            client = peer[0]
            count = self._per_client.get(client, 0)
            if len(self._tasks) >= self._max or count >= self._max_client:
                # Over a bound: refused at once (a reset) rather than queued, so one workspace's flood never
                # starves the others of the proxy (each client has its own cap below the total).
                mine = count >= self._max_client
                limit = self._max_client if mine else self._max
                self._limit_refused(
                    sock, client, f"limit: {limit} connections {'from this client' if mine else 'in all'}"
                )
                _reset(sock)
                continue
            self._per_client[client] = count + 1
            task = asyncio.create_task(self._serve(sock, client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._release, client))

    def _release(self, client: str, _task: asyncio.Task[None]) -> None:
        count = self._per_client[client] - 1
        if count:
            self._per_client[client] = count
        else:
            del self._per_client[client]

    def _limit_refused(self, sock: socket.socket, client: str, rule: str) -> None:
        now = self._clock()
        if now - self._limit_reported.get(client, -1e9) < 1.0:
            return
        if len(self._limit_reported) >= LIMIT_REPORTS_KEPT:
            self._limit_reported.clear()
        self._limit_reported[client] = now
        try:
            ip, port = original_destination(sock)
        except OSError:
            ip, port = "", 0
        try:
            self._on_refusal(Refusal(client, None, ip, port, "tcp", rule, time.time()))
        except Exception:
            log.exception("the egress refusal callback failed")

    async def _serve(self, sock: socket.socket, client: str) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            ip, port = original_destination(sock)
        except OSError:
            _reset(sock)  # not redirected (someone connected to the proxy's own port)
            return
        if (ip, port) == self.address or ipaddress.ip_address(ip).is_loopback:
            _reset(sock)  # a connection to the proxy itself would loop
            return
        try:
            data = await self._peek(sock)
            found = classify(data, final=True)
            assert found is not None
            protocol, name = found
            decision = self.table.get(client).decide(name, ip, port)
            if self._answers is not None:
                decision = check(decision, self._answers, client, name, ip, self._clock())
            if decision.github is not None and (protocol != "tls" or self._minter is None):
                rule = f"{decision.rule}: a GitHub grant is reached over HTTPS only"
                decision = Decision(False, rule, decision.by)
            if not decision.allowed:
                self._refuse(sock, Refusal(client, name, ip, port, protocol, decision.rule, time.time()))
                return
            if decision.intercept and protocol == "tls" and name is not None and self._minter is not None:
                await self._intercept(sock, client, name, ip, port, decision)
            else:
                await self._pass(sock, ip, port)
        except Exception:
            log.exception("egress connection from %s to %s:%d failed", client, ip, port)
            _reset(sock)

    async def _peek(self, sock: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._peek_timeout
        data = b""
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return data
            if not data:
                readable: asyncio.Future[None] = loop.create_future()
                loop.add_reader(sock.fileno(), _set_once, readable)
                try:
                    await asyncio.wait_for(readable, remaining)
                except TimeoutError:
                    return data
                finally:
                    loop.remove_reader(sock.fileno())
            else:
                # Part of a first message is here (a ClientHello over two segments): the rest follows closely.
                await asyncio.sleep(0.001)
            try:
                more = sock.recv(MAX_PEEK, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            if len(more) == len(data) and data:
                continue
            if not more or len(more) >= MAX_PEEK or classify(more, final=False) is not None:
                return more
            data = more

    def _refuse(self, sock: socket.socket, refusal: Refusal) -> None:
        try:
            self._on_refusal(refusal)
        except Exception:
            log.exception("the egress refusal callback failed")
        if refusal.protocol != "http":
            _reset(sock)
            return
        with contextlib.suppress(OSError):
            # The request is read first: closing with unread bytes would reset the 403 away.
            sock.recv(MAX_PEEK)
            sock.send(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(_FORBIDDEN_BODY)}\r\n\r\n".encode()
                + _FORBIDDEN_BODY
            )
            sock.shutdown(socket.SHUT_WR)
        sock.close()

    async def _connect(self, ip: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(loop.sock_connect(upstream, (ip, port)), self._connect_timeout)
        except BaseException:
            upstream.close()
            raise
        return upstream

    async def _pass(self, sock: socket.socket, ip: str, port: int) -> None:
        try:
            upstream = await self._connect(ip, port)
        except (OSError, TimeoutError):
            _reset(sock)  # as the client would have seen it without the proxy
            return
        if hasattr(os, "splice"):
            await self._splice(sock, upstream)
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        inbound, outbound = _Pipe(done), _Pipe(done)
        inbound.peer, outbound.peer = outbound, inbound
        try:
            await loop.connect_accepted_socket(lambda: inbound, sock)
            await loop.create_connection(lambda: outbound, sock=upstream)
        except BaseException:
            for side in (inbound, outbound):
                if side.transport is not None:
                    side.transport.abort()
            sock.close()
            upstream.close()
            raise
        assert inbound.transport is not None and outbound.transport is not None
        inbound.transport.resume_reading()
        outbound.transport.resume_reading()
        try:
            await done
        finally:
            inbound.transport.abort()
            outbound.transport.abort()

    async def _splice(self, sock: socket.socket, upstream: socket.socket) -> None:
        """Relay both ways in the kernel (splice through a pipe): no byte is copied into this process."""
        pumps = [asyncio.create_task(_pump(sock, upstream)), asyncio.create_task(_pump(upstream, sock))]
        try:
            await asyncio.gather(*pumps)
        except (OSError, asyncio.CancelledError):
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            _reset(sock)
            _reset(upstream)
            return
        sock.close()
        upstream.close()

    async def _intercept(
        self, sock: socket.socket, client: str, name: str, ip: str, port: int, decision: Decision
    ) -> None:
        assert self._minter is not None
        loop = asyncio.get_running_loop()
        context = await loop.run_in_executor(None, self._minter.context, name)
        reader = asyncio.StreamReader(limit=_RELAY_BUFFER, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context, ssl_handshake_timeout=self._handshake_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError):
            sock.close()  # the client does not trust the CA, or went away: nothing to answer
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            try:
                upstream = await self._connect(ip, port)
                ureader, uwriter = await asyncio.open_connection(
                    sock=upstream,
                    ssl=self._upstream,
                    server_hostname=name,
                    ssl_handshake_timeout=self._handshake_timeout,
                    limit=_RELAY_BUFFER,
                )
            except (OSError, ssl.SSLError, TimeoutError) as error:
                why = "upstream certificate not valid" if isinstance(error, ssl.SSLError) else "upstream unreachable"
                self._on_refusal(Refusal(client, name, ip, port, "tls", f"{why} for {name}", time.time()))
                await self._answer(writer, 502, f"agentbox egress: {why} for {name}\n")
                return
            responses = asyncio.create_task(self._copy(ureader, writer))
            try:
                await self._requests(reader, writer, uwriter, client, name, ip, port, decision)
            finally:
                if not responses.done():
                    # The client is done sending: the answers already asked for still come back.
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(asyncio.shield(responses), 30)
                responses.cancel()
                uwriter.transport.abort()
        finally:
            writer.transport.abort()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, body: str) -> None:
        data = body.encode()
        reason = {403: "Forbidden", 502: "Bad Gateway"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(OSError, ConnectionError):
            await writer.drain()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
            while data := await reader.read(_RELAY_BUFFER):
                writer.write(data)
                await writer.drain()
        writer.transport.close()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        client: str,
        name: str,
        ip: str,
        port: int,
        decision: Decision,
    ) -> None:
        """Forward the client's requests one by one, each with the rules' headers set (and a GitHub grant's
        token); a request outside a grant's repositories is answered 403 and ends the connection."""
        pending = b""
        first = True
        while True:
            # A parser per request: h11 would otherwise wait for the response before the next request.
            parser = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
            if pending:  # (b"" would tell h11 the client closed)
                parser.receive_data(pending)
            chunked = False
            while True:
                try:
                    event = parser.next_event()
                except h11.RemoteProtocolError:
                    return
                if event is h11.NEED_DATA:
                    try:
                        data = await reader.read(_RELAY_BUFFER)
                    except (OSError, ConnectionError, ssl.SSLError):
                        return
                    parser.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    grant = decision.github
                    if grant is not None and not grant.allows_target(event.target):
                        rule = f"{decision.rule}: {event.target.decode('latin-1')[:200]} is not a granted repository"
                        self._on_refusal(Refusal(client, name, ip, port, "tls", rule, time.time()))
                        await self._answer(writer, 403, f"agentbox egress: {rule}\n")
                        return
                    try:
                        head, chunked = await self._head(event, client, name, decision)
                    except LookupError as missing:
                        self._on_refusal(Refusal(client, name, ip, port, "tls", str(missing.args[0]), time.time()))
                        if first:
                            await self._answer(writer, 502, f"agentbox egress: {missing.args[0]}\n")
                        return
                    upstream.write(head)
                    first = False
                elif isinstance(event, h11.Data):
                    body = bytes(event.data)
                    upstream.write(b"%x\r\n%s\r\n" % (len(body), body) if chunked else body)
                elif isinstance(event, h11.EndOfMessage):
                    if chunked:
                        upstream.write(b"0\r\n\r\n")
                    break
                else:  # ConnectionClosed, or PAUSED after an Upgrade/CONNECT
                    if event is h11.PAUSED:
                        await self._raw(parser.trailing_data[0], reader, upstream)
                    return
                with contextlib.suppress(OSError, ConnectionError):
                    await upstream.drain()
            pending, closed = parser.trailing_data
            if closed and not pending:
                return

    async def _raw(self, pending: bytes, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        """After a protocol switch (a WebSocket): the rest of the connection as bytes."""
        upstream.write(pending)
        await self._copy(reader, upstream)

    async def _head(self, request: h11.Request, client: str, name: str, decision: Decision) -> tuple[bytes, bool]:
        templates: dict[str, str] = {}
        for rule in decision.headers:
            templates.update(rule.headers)  # a later (more specific, by the user's order) rule wins
        names = sorted({s for value in templates.values() for s in secret_names_in(value)})
        if decision.github is not None:
            names.append(github_token_name(decision.github.app))
        secrets: dict[str, str] = {}
        if names:
            if self._resolve is None:
                raise LookupError(f"no secret resolver for {', '.join(names)}")
            try:
                secrets = await self._resolve(client, name, names)
            except Exception as error:
                raise LookupError(f"secret unavailable: {error}") from None
            for secret in names:
                found = secrets.get(secret)
                if found is None or any(c in found for c in "\r\n\0"):
                    raise LookupError(f"secret unavailable: {secret}")
        wanted = {key: fill(template, secrets) for key, template in templates.items()}
        if decision.github is not None:  # in place of any the client or a rule sent
            wanted = {k: v for k, v in wanted.items() if k.lower() != "authorization"}
            wanted["Authorization"] = github_authorization(secrets[github_token_name(decision.github.app)])
        replaced = {key.lower() for key in wanted}
        lines = [b"%s %s HTTP/%s\r\n" % (request.method, request.target, request.http_version)]
        chunked = False
        for raw_key, raw_value in request.headers.raw_items():
            lowered = raw_key.lower()
            if lowered == b"transfer-encoding" and b"chunked" in raw_value.lower():
                chunked = True
            if lowered.decode("latin-1") not in replaced:
                lines.append(b"%s: %s\r\n" % (raw_key, raw_value))
        for key, value in wanted.items():
            lines.append(f"{key}: {value}\r\n".encode())
        lines.append(b"\r\n")
        return b"".join(lines), chunked
