"""The server's side of the proxy: starts it as a child process, keeps it running, feeds it policies.

`EgressSupervisor.set_policy(client, policy)` returns once the proxy holds the policy (the next
connection from `client` obeys it). Refusals come back to `on_refusal`; the proxy asks
`resolve_secrets(client, host, names)` for secret values (the vault, later) per intercepted request.
With a `ResolverConfig` the proxy's process runs the resolver too (resolver.py) on `dns_port`; its
upstreams default to the host's name servers (`default_upstreams`).
The policies are kept here too, so a proxy that died is started again (after a second) with all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from agentbox.egress.child import MAX_LINE
from agentbox.egress.proxy import Refusal
from agentbox.egress.resolver import ResolverConfig
from agentbox.egress.rules import Policy

log = logging.getLogger(__name__)

SecretResolver = Callable[[str, str, list[str]], Awaitable[dict[str, str]]]


class EgressError(RuntimeError):
    pass


def default_upstreams() -> tuple[str, ...]:
    """The host's IPv4 name servers, as Docker's embedded DNS reads them (firewall.host_resolvers reads them too).

    A host whose /etc/resolv.conf names only a loopback stub (systemd-resolved's 127.0.0.53, left out)
    is read where systemd-resolved lists the servers it forwards to, as Docker itself does.
    """
    found = name_servers(Path("/etc/resolv.conf")) or name_servers(Path("/run/systemd/resolve/resolv.conf"))
    return tuple(str(address) for address in found)


def name_servers(resolv_conf: Path) -> list[ipaddress.IPv4Address]:
    """The IPv4 name servers `resolv_conf` lists, loopback ones left out (the firewall reads the host's too)."""
    found = []
    for line in resolv_conf.read_text().splitlines() if resolv_conf.exists() else []:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address) and not address.is_loopback:
                found.append(address)
    return found


class EgressSupervisor:
    def __init__(
        self,
        *,
        ca_dir: Path,
        host: str = "0.0.0.0",
        port: int = 0,
        on_refusal: Callable[[Refusal], None] | None = None,
        resolve_secrets: SecretResolver | None = None,
        upstream_ca: Path | None = None,
        peek_timeout: float = 1.0,
        command_prefix: Sequence[str] = (),
        ack_timeout: float = 1.0,
        resolver: ResolverConfig | None = None,
        max_connections: int = 4096,
        max_client_connections: int = 512,
        refusals_per_second: int = 20,
    ) -> None:
        """`max_connections`, `max_client_connections`: the proxy's bounds on connections served at once, in all
        and per client (workspace); past them a connection is reset at once and a Refusal says which limit.
        `refusals_per_second`: the refusals of one client a second that reach `on_refusal` (the audit trail); the
        rest are only counted (`dropped_refusals`)."""
        if resolver is not None and not resolver.upstreams:
            resolver = dataclasses.replace(resolver, upstreams=default_upstreams())
        self.resolver = resolver
        self._ca_dir = ca_dir
        self._host, self._port = host, port
        self._on_refusal = on_refusal or (lambda _r: None)
        self._resolve = resolve_secrets
        self._upstream_ca = upstream_ca
        self._peek_timeout = peek_timeout
        self._limits = (max_connections, max_client_connections, refusals_per_second)
        # e.g. ("ip", "netns", "exec", NAME) in tests: the proxy runs where the redirected traffic arrives.
        self._prefix = tuple(command_prefix)
        self._ack_timeout = ack_timeout
        self._policies: dict[str, Policy] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._ready: asyncio.Future[int] | None = None
        self.port: int = port
        #: The resolver's port (UDP and TCP), once started; None without a resolver.
        self.dns_port: int | None = None
        self.dropped_refusals = 0

    async def start(self, timeout: float = 10.0) -> int:
        """Start the proxy (and the resolver); its port (the one asked for, or the one it was given).

        Raises EgressError when the process does not say it is ready within `timeout` (it could not
        bind its ports, for one).
        """
        self._stopping = False
        await self._spawn(timeout)
        watch = asyncio.create_task(self._watch())
        self._tasks.add(watch)
        return self.port

    async def _spawn(self, timeout: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            command = [
                *self._prefix,
                sys.executable,
                "-m",
                "agentbox.egress",
                "--control-fd",
                str(theirs.fileno()),
                "--host",
                self._host,
                "--port",
                str(self.port),
                "--ca-dir",
                str(self._ca_dir),
                "--peek-timeout",
                str(self._peek_timeout),
                "--max-connections",
                str(self._limits[0]),
                "--max-client-connections",
                str(self._limits[1]),
                "--refusals-per-second",
                str(self._limits[2]),
            ]
            if self._upstream_ca is not None:
                command += ["--upstream-ca", str(self._upstream_ca)]
            if self.resolver is not None:
                # Started again on the port it had: the workspaces' DNS is sent there.
                config = dataclasses.replace(self.resolver, port=self.dns_port or self.resolver.port)
                command += ["--resolver", config.to_json()]
            self._process = await asyncio.create_subprocess_exec(
                *command, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=dict(os.environ)
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours, limit=MAX_LINE)
        self._ready = asyncio.get_running_loop().create_future()
        reading = asyncio.create_task(self._read(reader))
        self._tasks.add(reading)
        reading.add_done_callback(self._tasks.discard)
        try:
            self.port = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except (TimeoutError, EgressError) as error:
            await self._kill()
            raise EgressError(f"the egress proxy did not start: {error or 'no answer'}") from None
        for client, policy in self._policies.items():
            await self._send_policy(client, policy)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                break
            try:
                message = json.loads(line)
                op = message.get("op")
            except (ValueError, AttributeError):
                log.error("egress proxy: not a message: %.200r", line)
                continue
            if op == "ready" and self._ready is not None and not self._ready.done():
                dns_port = message.get("dns_port")
                self.dns_port = int(dns_port) if dns_port is not None else None
                self._ready.set_result(int(message["port"]))
            elif op in ("ack", "nack"):
                future = self._acks.pop(message.get("seq"), None)
                if future is not None and not future.done():
                    if op == "ack":
                        future.set_result(None)
                    else:
                        future.set_exception(EgressError(str(message.get("detail"))))
            elif op == "refusal":
                self.dropped_refusals += int(message.pop("dropped", 0))
                message.pop("op")
                try:
                    self._on_refusal(Refusal(**message))
                except Exception:
                    log.exception("the egress refusal callback failed")
            elif op == "reveal":
                task = asyncio.create_task(self._reveal(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EgressError("the proxy exited"))
        for future in self._acks.values():
            if not future.done():
                future.set_exception(EgressError("the egress proxy exited"))
        self._acks.clear()

    async def _reveal(self, message: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"op": "secrets", "id": message.get("id")}
        try:
            if self._resolve is None:
                raise LookupError("no secrets on this server")
            answer["values"] = await self._resolve(
                str(message["client"]), str(message["host"]), [str(n) for n in message["names"]]
            )
        except Exception as error:
            answer = {"op": "secrets", "id": message.get("id"), "error": str(error)[:500]}
        self._write(answer)

    def _write(self, message: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            raise EgressError("the egress proxy is not running")
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def set_policy(self, client: str, policy: Policy | None) -> None:
        """Give `client` (a workspace's address) `policy` (None: forget it; the proxy then refuses it all)."""
        if policy is None:
            self._policies.pop(client, None)
        else:
            self._policies[client] = policy
        await self._send_policy(client, policy)

    async def _send_policy(self, client: str, policy: Policy | None) -> None:
        seq = next(self._seq)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[seq] = future
        body = None if policy is None else policy.model_dump(mode="json")
        try:
            self._write({"op": "set", "seq": seq, "client": client, "policy": body})
            assert self._writer is not None
            await self._writer.drain()
            await asyncio.wait_for(future, self._ack_timeout)
        except TimeoutError:
            detail = f"the egress proxy did not take the policy for {client} within {self._ack_timeout}s"
            raise EgressError(detail) from None
        finally:
            self._acks.pop(seq, None)

    async def _watch(self) -> None:
        """Start the proxy again when it dies (not when stopped), at most once a second."""
        while not self._stopping:
            process = self._process
            if process is None:
                return
            code = await process.wait()
            if self._stopping:
                return
            log.error("the egress proxy exited (%s); starting it again", code)
            await asyncio.sleep(1.0)
            try:
                await self._spawn(10.0)
            except EgressError:
                log.exception("the egress proxy did not start again")

    async def _kill(self) -> None:
        if self._writer is not None:
            self._writer.close()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        await self._kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
