"""The proxy's own process (`python -m agentbox.egress`), driven by the server over one control socket.

The control channel is a Unix socketpair made by the supervisor (supervisor.py) and inherited as a file
descriptor: nothing listens, so nothing else can reach it. Newline-delimited JSON, one object a line,
each at most `MAX_LINE` bytes, both ways:

server → proxy  {"op": "set", "seq": n, "client": "10.0.0.5", "policy": {...} | null}
                {"op": "secrets", "id": n, "values": {"NAME": "..."}} | {"op": "secrets", "id": n, "error": "..."}
proxy → server  {"op": "ready", "port": p, "dns_port": d | null}
                {"op": "ack", "seq": n} | {"op": "nack", "seq": n, "detail": "..."}
                {"op": "refusal", "client": ..., "name": ..., "ip": ..., "port": ..., "protocol": ..., "rule": ...,
                 "at": ..., "dropped": k}   (k: refusals held back since the last one sent: the budget, a full queue)
                {"op": "reveal", "id": n, "client": ..., "host": ..., "names": [...]}

A `set` is acknowledged once the table holds it, so the server knows the next connection obeys it.
A `set` with policy null also forgets what the resolver told that client: the address may next be
another workspace's, which must not inherit the answers.

With `--resolver` (a `ResolverConfig` as JSON) the resolver runs here too, sharing the policies and
the answer memory with the proxy. Without it the memory stays empty, so a connection allowed by a
name rule is refused (no name can be trusted without the resolver); address rules still work.
Secret values cross only this socket, in memory, per request; they are never logged or written. The
proxy exits when the server's end closes (the server died or stopped it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agentbox.egress.answers import AnswerMemory
from agentbox.egress.ca import LeafMinter, ensure_ca
from agentbox.egress.proxy import EgressProxy, PolicyTable, Refusal, RefusalBudget
from agentbox.egress.resolver import Resolver, ResolverConfig
from agentbox.egress.rules import Policy

MAX_LINE = 1024 * 1024
REFUSAL_QUEUE = 1000
REVEAL_TIMEOUT = 5.0

log = logging.getLogger("agentbox.egress")


class _Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: RefusalBudget) -> None:
        self._reader, self._writer = reader, writer
        self._refusals: asyncio.Queue[Refusal] = asyncio.Queue(REFUSAL_QUEUE)
        self._budget = budget
        self._dropped = 0
        self._reveals: dict[int, asyncio.Future[dict[str, str]]] = {}
        self._next_id = 0

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def refused(self, refusal: Refusal) -> None:
        """Every refusal of the proxy and the resolver: bounded both in the proxy's memory (the queue) and in
        what reaches the audit trail (the budget); what is held back is counted."""
        if not self._budget.allows(refusal):
            self._dropped += 1
            return
        try:
            self._refusals.put_nowait(refusal)
        except asyncio.QueueFull:
            self._dropped += 1

    async def send_refusals(self) -> None:
        while True:
            refusal = await self._refusals.get()
            self.send({"op": "refusal", **refusal.to_json(), "dropped": self._dropped})
            self._dropped = 0
            await self._writer.drain()

    async def reveal(self, client: str, host: str, names: list[str]) -> dict[str, str]:
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._reveals[ident] = future
        try:
            self.send({"op": "reveal", "id": ident, "client": client, "host": host, "names": names})
            await self._writer.drain()
            return await asyncio.wait_for(future, REVEAL_TIMEOUT)
        finally:
            self._reveals.pop(ident, None)

    async def serve(self, table: PolicyTable, answers: AnswerMemory) -> None:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # the server is gone
            except asyncio.LimitOverrunError:
                log.error("egress control: a line over %d bytes; closing", MAX_LINE)
                return
            try:
                message = json.loads(line)
                op = message["op"]
            except (ValueError, KeyError, TypeError):
                log.error("egress control: not a message: %.200r", line)
                continue
            if op == "set":
                self._set(table, answers, message)
            elif op == "secrets":
                future = self._reveals.get(message.get("id", -1))
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(LookupError(str(message["error"])))
                    else:
                        future.set_result({str(k): str(v) for k, v in dict(message.get("values", {})).items()})
            await self._writer.drain()

    def _set(self, table: PolicyTable, answers: AnswerMemory, message: dict[str, Any]) -> None:
        seq = message.get("seq")
        try:
            client = str(message["client"])
            raw = message.get("policy")
            table.set(client, None if raw is None else Policy.model_validate(raw))
        except (KeyError, ValidationError) as error:
            self.send({"op": "nack", "seq": seq, "detail": str(error)[:2000]})
            return
        if raw is None:
            answers.forget(client)
        self.send({"op": "ack", "seq": seq})


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    control = socket.socket(fileno=args.control_fd)
    reader, writer = await asyncio.open_connection(sock=control, limit=MAX_LINE)
    channel = _Channel(reader, writer, RefusalBudget(args.refusals_per_second))
    ca_cert, ca_key = ensure_ca(Path(args.ca_dir))
    upstream = ssl.create_default_context(cafile=args.upstream_ca) if args.upstream_ca else None
    if upstream is not None:
        upstream.load_default_certs()
    table = PolicyTable()
    config = ResolverConfig.from_json(args.resolver) if args.resolver else None
    answers = config.memory() if config is not None else AnswerMemory()
    proxy = EgressProxy(
        table,
        minter=LeafMinter(ca_cert, ca_key, scratch=Path(args.ca_dir)),
        resolve_secrets=channel.reveal,
        on_refusal=channel.refused,
        upstream_context=upstream,
        peek_timeout=args.peek_timeout,
        max_connections=args.max_connections,
        max_client_connections=args.max_client_connections,
        answers=answers,
    )
    resolver = Resolver(config, table, answers, on_refusal=channel.refused) if config is not None else None
    _, port = await proxy.start(args.host, args.port)
    dns_port = (await resolver.start())[1] if resolver is not None else None
    channel.send({"op": "ready", "port": port, "dns_port": dns_port})
    sender = loop.create_task(channel.send_refusals())
    try:
        await channel.serve(table, answers)
    finally:
        sender.cancel()
        if resolver is not None:
            await resolver.close()
        await proxy.close()
        with contextlib.suppress(OSError):
            writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentbox.egress", description=__doc__.splitlines()[0])
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ca-dir", required=True, help="where the CA is kept (made the first time)")
    parser.add_argument("--upstream-ca", help="extra CAs (PEM) trusted for intercepted upstreams")
    parser.add_argument("--peek-timeout", type=float, default=1.0)
    parser.add_argument("--max-connections", type=int, default=4096, help="connections served at once, in all")
    parser.add_argument("--max-client-connections", type=int, default=512, help="connections at once per client")
    parser.add_argument("--refusals-per-second", type=int, default=20, help="refusals of one client a second sent on")
    parser.add_argument("--resolver", help="run the resolver too: its ResolverConfig as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="egress: %(levelname)s %(message)s")
    asyncio.run(run(args))
