"""Where the server may connect on a GitHub App's behalf: public addresses over https, unless allowed.

An App's `api_url` is chosen by whoever registers it, and the server connects to it (and to
its git host) from the host's network: left open, that reaches the host's loopback services,
the private network and cloud metadata (169.254.169.254). So a URL must be https, and every
address its host resolves to must be public; an operator allows a host that is neither (a
GitHub Enterprise Server inside the network, a local stand-in) with GITHUB_API_ALLOWED_HOSTS.

The check runs at registration, to refuse early with a clear 400, and again at every connection,
since DNS can change in between (rebinding): the address checked is the address connected to
(`PinnedBackend` for the API through httpx, `curl_resolve` for git), never a second lookup.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

SETTING = "GITHUB_API_ALLOWED_HOSTS"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A URL or address the server does not connect to for a GitHub App; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower case; an IPv6 address without brackets
    port: int


def _host(text: str) -> str:
    """A host as compared: lower case, an IP address in its canonical form, without brackets."""
    bare = text.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.rstrip(".")


def _forbidden(address: Address) -> str | None:
    """What kind of non-public address `address` is, or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        teredo = address.teredo[1] if address.teredo else None
        nat64 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        for embedded in (address.ipv4_mapped, address.sixtofour, teredo, nat64):
            if embedded is not None and (kind := _forbidden(embedded)) is not None:
                return kind
    kinds = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("shared (carrier-grade NAT)", address in _CGNAT),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((kind for kind, applies in kinds if applies), None)


class EgressPolicy:
    """The operator's allowed hosts (`host` or `host:port`), and the checks of URLs and addresses."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._hosts: set[str] = set()  # any port
        self._host_ports: set[tuple[str, int]] = set()
        for entry in allowed:
            try:
                parsed = urlsplit(f"//{entry.strip()}")
                port = parsed.port
            except ValueError:
                parsed, port = None, None
            if parsed is None or parsed.hostname is None:
                raise ValueError(f"{SETTING}: {entry!r} is not a host or host:port")
            if port is None:
                self._hosts.add(_host(parsed.hostname))
            else:
                self._host_ports.add((_host(parsed.hostname), port))

    def allows(self, host: str, port: int) -> bool:
        """Whether the operator allowed this host (on this port, or on any)."""
        return _host(host) in self._hosts or (_host(host), port) in self._host_ports

    def target(self, url: str) -> Target:
        """`url`'s scheme, host and port, if its form is allowed (https, or http to an allowed host)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise Refused(f"{url!r} is not a URL ({exc})") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise Refused(f"{url!r} is not an https URL: use https://api.github.com or https://HOST/api/v3")
        if parts.username is not None or parts.password is not None:
            raise Refused("a URL with credentials in it is not accepted: give https://HOST/api/v3 alone")
        target = Target(parts.scheme, _host(parts.hostname), port or _DEFAULT_PORTS[parts.scheme])
        if target.scheme == "http" and not self.allows(target.host, target.port):
            raise Refused(
                f"http is accepted only for hosts the operator allowed in {SETTING}: use https://{parts.netloc}"
                f"{parts.path}, or ask the operator to add {parts.netloc} to {SETTING}"
            )
        return target

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`:`port`: all public, unless the operator allowed the host.

        Raises Refused if any address the name has is not public (one private answer among
        public ones is enough to reach inside), or OSError if the name does not resolve."""
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        if self.allows(host, port):
            return addresses
        for text in addresses:
            kind = _forbidden(ipaddress.ip_address(text.split("%", 1)[0]))
            if kind is not None:
                shown = host if _host(host) == _host(text) else f"{host} (at {text})"
                raise Refused(
                    f"{shown} is a {kind} address, which the server does not connect to for a GitHub App; "
                    f"use GitHub's public API, or ask the operator to allow the host in {SETTING}"
                )
        return addresses

    def check(self, url: str) -> None:
        """At registration: refuse `url` if its form or any address its host has now is not allowed.

        A name that does not resolve now is let through: it is checked again at each connection."""
        target = self.target(url)
        with contextlib.suppress(OSError):
            self.resolve(target.host, target.port)

    def curl_resolve(self, url: str) -> str | None:
        """For git (libcurl's CURLOPT_RESOLVE, `http.curloptResolve`): `url`'s host pinned to its checked
        addresses, so that git connects where the check looked; None for an IP address or an allowed host."""
        target = self.target(url)
        if self.allows(target.host, target.port):
            return None
        try:
            addresses = self.resolve(target.host, target.port)
        except OSError as exc:
            raise Refused(f"{target.host} cannot be resolved ({exc})") from None
        try:
            ipaddress.ip_address(target.host)
            return None  # an address: nothing to resolve, and it was just checked
        except ValueError:
            pass
        shown = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        return f"{target.host}:{target.port}:{shown}"


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, connected only to the addresses the policy checked for the host."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.policy.resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} cannot be resolved ({exc})") from None
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                # TLS still verifies (and names, by SNI) the host: httpcore takes it from the URL.
                return self._sockets.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("GitHub is not reached through a Unix socket")

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport over a `PinnedBackend`; no proxies from the environment (git uses none either)."""

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(trust_env=False)
        # httpx (pinned to 0.28 in pyproject) takes no network backend of its own: its pool is rebuilt
        # with httpx's TLS context and the pinned backend.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(policy),
        )
