"""The resolver agentbox gives a workspace with an egress policy: DNS on UDP and TCP, by policy, remembered.

It runs in the proxy's process (child.py), on its own address (the provider sends the workspace's
port 53 there, keyed like the proxy by the workspace's source address), and shares with the proxy an
`AnswerMemory` (answers.py): what it answered each client is what the proxy lets that client reach
by name (naming.py).

Per query, from a client (its source address) with a policy in the `PolicyTable`:

- a name no connection of the policy could reach (`naming.answerable`) is answered REFUSED at once,
  never looked up: the query never leaves the host (no tunnelling through names), and a refusal
  goes to `on_refusal` (protocol "dns", its rule the policy's entry that refused the name, or the
  default: `naming.refusal`) for the audit trail. REFUSED rather than NXDOMAIN because
  NXDOMAIN says "this name does not exist", which is false and may be cached as a negative answer by
  whatever resolver the workspace runs (its SOA minimum), outliving a policy change that allows the
  name; REFUSED is "this server will not answer you", never cached, and stub resolvers (glibc, musl,
  Go) give up on it at once;
- A (and CNAME) queries are forwarded to the upstream resolvers, one after the other until one
  answers, each within `timeout`; the answer's CNAME chain from the name asked and its A records
  are returned (nothing else: authority and additional records are dropped), every record with the
  chain's smallest TTL, at most `max_ttl`, and each address is remembered for the client under the
  name it asked, with that TTL;
- AAAA is answered empty (NOERROR, no record) without a lookup: workspaces have IPv4 only, and
  an empty answer makes clients fall back to A at once; every other type is answered empty too
  (a TXT or NULL lookup of an allowed name is a channel out that nothing here needs).

Bounded: at most `client_in_flight` lookups upstream per client and `in_flight` in all, past which a
query is answered SERVFAIL at once (nothing queues); at most `max_tcp` TCP connections, each closed
after `tcp_idle` seconds without a query; the memory of answers has its own bounds (answers.py).

Not a cache: every allowed query is a lookup upstream (the host's resolver caches), so a changed
record is seen at the next query, and what the client holds and what the proxy allows agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import CNAME as CNAMEData
from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSQuestion, DNSRecord

from agentbox.egress.answers import AnswerMemory
from agentbox.egress.naming import answerable, refusal
from agentbox.egress.proxy import PolicyTable, Refusal
from agentbox.egress.rules import normalize_name

log = logging.getLogger(__name__)

_UDP_PLAIN = 512  # a reply's limit over UDP without EDNS (RFC 1035)
_UDP_MAX = 4096  # the most any client is sent over UDP, whatever its EDNS size says
_MAX_CHAIN = 8  # CNAME links followed from the name asked
_SWEEP_EVERY = 30.0


@dataclass(frozen=True)
class ResolverConfig:
    """Where the resolver listens, where it asks, and its bounds (see the module's docstring)."""

    host: str
    port: int = 53
    #: "address" or "address:port"; empty: none (every allowed lookup is a SERVFAIL).
    upstreams: tuple[str, ...] = ()
    timeout: float = 2.0
    max_ttl: int = 600
    grace: float = 30.0
    answers_per_client: int = 4096
    answers_total: int = 65536
    client_in_flight: int = 16
    in_flight: int = 256
    max_tcp: int = 128
    tcp_idle: float = 10.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ResolverConfig:
        """Raises ValueError (or TypeError, for an unknown field) for text that is no configuration."""
        raw = json.loads(text)
        return cls(**{**raw, "upstreams": tuple(raw.get("upstreams", ()))})

    def upstream_addresses(self) -> list[tuple[str, int]]:
        """The upstreams as (address, port). Raises ValueError for one that is not IPv4[:port]."""
        found = []
        for upstream in self.upstreams:
            address, _, port = upstream.partition(":")
            socket.inet_aton(address)  # OSError (a ValueError's sibling) for a non-address
            found.append((address, int(port or 53)))
        return found

    def memory(self) -> AnswerMemory:
        """An `AnswerMemory` with this configuration's bounds and grace."""
        return AnswerMemory(per_client=self.answers_per_client, total=self.answers_total, grace=self.grace)


class Resolver:
    """The DNS server (UDP and TCP on one port); `answer` is its whole logic, the rest is transport."""

    def __init__(
        self,
        config: ResolverConfig,
        table: PolicyTable,
        answers: AnswerMemory,
        *,
        on_refusal: Callable[[Refusal], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ValueError when an upstream is not an IPv4 address with an optional port."""
        try:
            self._upstreams = config.upstream_addresses()
        except (OSError, ValueError):
            raise ValueError(f"an upstream resolver is not IPv4[:port]: {config.upstreams}") from None
        self.config = config
        self.table = table
        self.answers = answers
        self._on_refusal = on_refusal or (lambda _r: None)
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_connections = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: Queries answered SERVFAIL at once because a bound was reached (for the tests and metrics).
        self.busy = 0
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> tuple[str, int]:
        """Listen on UDP and TCP (the same port; 0: one the kernel picks). Raises OSError if it cannot bind."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPProtocol(self), local_addr=(self.config.host, self.config.port)
        )
        self._udp = transport
        self.address = transport.get_extra_info("sockname")[:2]
        try:
            host, port = self.address
            self._tcp = await asyncio.start_server(self._serve_tcp, host, port, reuse_address=True)
        except OSError:
            transport.close()
            raise
        self._sweeper = asyncio.create_task(self._sweep())
        return self.address

    async def close(self) -> None:
        """Stop listening and drop the lookups under way."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def answer(self, data: bytes, client: str) -> bytes | None:
        """The reply to the query `data` from `client` (None: not a DNS message, left unanswered). Never raises."""
        triaged = self._triage(data, client)
        if triaged is None or isinstance(triaged, DNSRecord):
            return None if triaged is None else bytes(triaged.pack())
        request, host = triaged
        if not self._admit(client):
            self.busy += 1
            return bytes(_reply(request, RCODE.SERVFAIL).pack())
        try:
            return bytes((await self._lookup(request, client, host)).pack())
        finally:
            self._release(client)

    # ---- the logic ----

    def _triage(self, data: bytes, client: str) -> DNSRecord | tuple[DNSRecord, str] | None:
        """A reply to send now, or (request, name) to look up, or None for bytes that are no query."""
        try:
            request = DNSRecord.parse(data)
        except (DNSError, struct.error, ValueError, IndexError):
            return _formerr(data)
        if request.header.qr or request.header.opcode != 0:
            return _reply(request, RCODE.NOTIMP) if not request.header.qr else None
        if len(request.questions) != 1:
            return _reply(request, RCODE.FORMERR)
        question = request.q
        host = normalize_name(str(question.qname))
        policy = self.table.get(client)
        if host is None or not answerable(policy, host):
            self._refused(client, host or str(question.qname), refusal(policy, host or "").rule)
            return _reply(request, RCODE.REFUSED)
        if question.qtype not in (QTYPE.A, QTYPE.CNAME):
            return _reply(request, RCODE.NOERROR)  # AAAA and the rest: empty (see the module's docstring)
        return request, host

    async def _lookup(self, request: DNSRecord, client: str, host: str) -> DNSRecord:
        qtype = request.q.qtype
        upstream = await self._forward(host, qtype)
        if upstream is None:
            return _reply(request, RCODE.SERVFAIL)
        rcode = upstream.header.rcode
        reply = _reply(request, rcode)
        if rcode != RCODE.NOERROR:
            return reply
        chain, addresses, ttl = _chain(upstream, host)
        ttl = min(ttl, self.config.max_ttl)
        for owner, target in chain:
            reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAMEData(target), ttl=ttl))
        if qtype == QTYPE.A:
            now = self._clock()
            for owner, address in addresses:
                reply.add_answer(RR(owner, QTYPE.A, rdata=A(address), ttl=ttl))
                self.answers.remember(client, host, address, ttl, now)
        return reply

    async def _forward(self, host: str, qtype: int) -> DNSRecord | None:
        """The first upstream's answer to (host, qtype), or None when none answers in time."""
        for upstream in self._upstreams:
            query = DNSRecord(DNSHeader(id=secrets.randbits(16), rd=1), q=DNSQuestion(host, qtype))
            try:
                raw = await asyncio.wait_for(_udp_exchange(upstream, query.pack()), self.config.timeout)
                response = DNSRecord.parse(raw)
                if response.header.tc:
                    raw = await asyncio.wait_for(_tcp_exchange(upstream, query.pack()), self.config.timeout)
                    response = DNSRecord.parse(raw)
            except (OSError, TimeoutError, DNSError, struct.error, ValueError, IndexError) as error:
                log.debug("upstream %s:%d for %s: %s", *upstream, host, error)
                continue
            if response.header.id != query.header.id or response.q.qname != query.q.qname:
                continue  # not the answer to this question: a spoof or a confused upstream
            if response.header.rcode in (RCODE.SERVFAIL, RCODE.REFUSED):
                continue  # the next upstream may do better
            return response
        return None

    def _admit(self, client: str) -> bool:
        count = self._in_flight.get(client, 0)
        if count >= self.config.client_in_flight or self._in_flight_total >= self.config.in_flight:
            return False
        self._in_flight[client] = count + 1
        self._in_flight_total += 1
        return True

    def _release(self, client: str) -> None:
        self._in_flight_total -= 1
        count = self._in_flight[client] - 1
        if count:
            self._in_flight[client] = count
        else:
            del self._in_flight[client]  # the table never holds idle clients

    def _refused(self, client: str, name: str, rule: str) -> None:
        try:
            self._on_refusal(Refusal(client, name, "", 53, "dns", rule, time.time()))
        except Exception:
            log.exception("the egress refusal callback failed")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY)
            self.answers.sweep(self._clock())

    # ---- the transports ----

    def _spawn(self, data: bytes, client: tuple[str, int]) -> None:
        assert self._udp is not None
        task = asyncio.create_task(self._answer_udp(data, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(self, data: bytes, client: tuple[str, int]) -> None:
        reply = await self.answer(data, client[0])
        if reply is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(_fit(reply, data), client)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_connections >= self.config.max_tcp:
            writer.transport.abort()
            return
        self._tcp_connections += 1
        client = writer.get_extra_info("peername")[0]
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.config.tcp_idle)
                    size = struct.unpack("!H", head)[0]
                    data = await asyncio.wait_for(reader.readexactly(size), self.config.tcp_idle)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = await self.answer(data, client)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_connections -= 1
            writer.transport.abort()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # A task per query: the in-flight bounds are checked in `answer`, before any lookup starts,
        # and a query that needs none (refused, AAAA) is answered without waiting for any other.
        self._resolver._spawn(data, addr)


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._done.done():
            self._done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)


async def _udp_exchange(upstream: tuple[str, int], query: bytes) -> bytes:
    """One query over UDP from a fresh socket (a random source port), its first answer."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Exchange(done), remote_addr=upstream)
    try:
        transport.sendto(query)
        return await done
    finally:
        transport.close()


async def _tcp_exchange(upstream: tuple[str, int], query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.transport.abort()


def _reply(request: DNSRecord, rcode: int) -> DNSRecord:
    reply = DNSRecord(DNSHeader(id=request.header.id, qr=1, rd=request.header.rd, ra=1, rcode=rcode), q=request.q)
    return reply


def _formerr(data: bytes) -> DNSRecord | None:
    """FORMERR to a message whose header at least can be read (None: not even that)."""
    if len(data) < 12:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None  # a response, not a query: never answer one (no reflection loops)
    return DNSRecord(DNSHeader(id=ident, qr=1, ra=1, rcode=RCODE.FORMERR))


def _chain(response: DNSRecord, host: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """(CNAME links, (owner, address) A records, smallest TTL) of `response` from `host` on."""
    records = [(normalize_name(str(rr.rname)) or "", rr) for rr in response.rr]
    names, links, ttl = [host], [], 2**31 - 1
    for _ in range(_MAX_CHAIN):
        step = next(((o, rr) for o, rr in records if rr.rtype == QTYPE.CNAME and o == names[-1]), None)
        if step is None:
            break
        target = normalize_name(str(step[1].rdata.label))
        if target is None or target in names:
            break
        links.append((names[-1], target))
        names.append(target)
        ttl = min(ttl, step[1].ttl)
    addresses = []
    for owner, rr in records:
        if rr.rtype == QTYPE.A and owner == names[-1]:
            addresses.append((owner, str(rr.rdata)))
            ttl = min(ttl, rr.ttl)
    return links, addresses, (ttl if links or addresses else 0)


def _fit(reply: bytes, query: bytes) -> bytes:
    """`reply` as it may go over UDP: within the client's size (512, or its EDNS size), else truncated."""
    limit = _UDP_PLAIN
    with contextlib.suppress(DNSError, struct.error, ValueError, IndexError):
        for rr in DNSRecord.parse(query).ar:
            if rr.rtype == QTYPE.OPT:
                limit = max(_UDP_PLAIN, min(int(rr.rclass), _UDP_MAX))
    if len(reply) <= limit:
        return reply
    record = DNSRecord.parse(reply)
    # The question kept (so the client matches it), the answers dropped, TC set: the client asks over TCP.
    return bytes(DNSRecord(DNSHeader(id=record.header.id, qr=1, rd=record.header.rd, ra=1, tc=1), q=record.q).pack())
