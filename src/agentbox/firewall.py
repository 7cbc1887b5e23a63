"""The host firewall around the workspace network: what a workspace may reach.

Three iptables chains per workspace network, owned by agentbox and rewritten whole (one
atomic `iptables-restore`) whenever a workspace comes or goes (creates that arrive together
share one rewrite: `sync`), and again every few seconds, so that they come back after a
firewall flush:

- `AGENTBOX-FWD-<network>`, hooked from DOCKER-USER for traffic from the bridge, is what a
  workspace may reach through the host: never the addresses in `blocked` (private ranges,
  link-local and metadata addresses, the host's own networks); then, per workspace (known
  by the MAC address it was created with), the public internet or only its allow list;
  everything else is rejected.
- `AGENTBOX-IN-<network>`, hooked from INPUT, rejects every connection a workspace opens
  to the host itself (the API, the database, anything listening on any host address);
  answers to connections the host opened pass.

Blocked connections are rejected, not dropped, so that they fail at once (TCP with a reset,
the rest with an ICMP error; `AGENTBOX-REJ-<network>`). DNS to the host's
resolvers is let through (Docker's embedded DNS forwards workspaces' queries from their
own network namespace). IPv6 is not routed for workspaces: every IPv6 packet from the
bridge is rejected.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from agentbox.errors import AgentboxError, BadRequest

log = logging.getLogger("agentbox.firewall")

#: Never reachable from a workspace, whatever its policy.
ALWAYS_BLOCKED = tuple(
    IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT, and Alibaba's metadata address 100.100.100.200
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: the cloud metadata address 169.254.169.254
        "172.16.0.0/12",  # RFC 1918 (Docker's own networks)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved and broadcast
    )
)
# TCP gets a reset, so connect() fails at once with ECONNREFUSED: the kernel rate-limits the
# ICMP errors that the rest gets (about one a second per workspace after a short burst), and a
# connection whose ICMP error was suppressed would hang until it timed out.
REJECT_TCP = "-p tcp -j REJECT --reject-with tcp-reset"
REJECT_OTHER = {4: "-j REJECT --reject-with icmp-admin-prohibited", 6: "-j REJECT --reject-with icmp6-adm-prohibited"}
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
#: Per workspace MAC address: None for the public internet, else the CIDRs of its allow list.
Grants = Mapping[str, Sequence[str] | None]


class FirewallError(AgentboxError):
    """The firewall rules cannot be installed; the message says what to fix."""

    status_code = 503  # iptables busy or broken: nothing was made, the request can be retried


@dataclass
class Firewall:
    bridge: str  # the network's Linux bridge, e.g. br-0123456789ab
    tag: str  # names the chains: the network id's first 12 hex digits
    blocked: tuple[IPv4Network, ...]
    resolvers: tuple[IPv4Address, ...]
    ipv6: bool = True
    applied: dict[str, tuple[str, ...] | None] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def for_network(cls, network: Mapping[str, object]) -> Firewall:
        """The firewall of a Docker bridge network (as inspected), with this host's addresses blocked."""
        name = network.get("Name")
        if os.geteuid() != 0 or shutil.which("iptables-restore") is None:
            raise FirewallError(
                f"WORKSPACE_NETWORK_NAME={name}: fencing the workspace network needs iptables and root "
                "(run agentbox as root with iptables installed, or leave WORKSPACE_NETWORK_NAME empty "
                "and accept workspaces on Docker's default bridge without isolation)"
            )
        network_id = str(network["Id"])
        options = network.get("Options") or {}
        assert isinstance(options, dict)
        bridge = options.get("com.docker.network.bridge.name") or f"br-{network_id[:12]}"
        ipam = network.get("IPAM") or {}
        assert isinstance(ipam, dict)
        own = [IPv4Network(c["Subnet"]) for c in ipam.get("Config") or [] if ":" not in c.get("Subnet", ":")]
        blocked = _collapse([*ALWAYS_BLOCKED, *own, *connected_subnets()])
        return cls(
            bridge=bridge,
            tag=network_id[:12],
            blocked=blocked,
            resolvers=host_resolvers(),
            ipv6=shutil.which("ip6tables-restore") is not None,
        )

    @property
    def forward_chain(self) -> str:
        return f"AGENTBOX-FWD-{self.tag}"

    @property
    def input_chain(self) -> str:
        return f"AGENTBOX-IN-{self.tag}"

    @property
    def reject_chain(self) -> str:
        return f"AGENTBOX-REJ-{self.tag}"

    def hooks(self, family: int) -> list[tuple[str, str]]:
        """(built-in chain, our chain) jumps, for IPv4 (4) or IPv6 (6)."""
        # IPv4 goes through DOCKER-USER, which Docker keeps first in FORWARD; Docker has no
        # IPv6 rules of its own here, so IPv6 hooks straight into FORWARD.
        forward = "DOCKER-USER" if family == 4 else "FORWARD"
        return [(forward, self.forward_chain), ("INPUT", self.input_chain)]

    def ruleset(self, grants: Grants, family: int = 4) -> str:
        """The chains' whole contents, in iptables-restore's format (declaring a chain empties it)."""
        fwd, inp, rej = self.forward_chain, self.input_chain, self.reject_chain
        lines = ["*filter", *(f":{chain} - [0:0]" for chain in (fwd, inp, rej))]
        lines += [f"-A {rej} {REJECT_TCP}", f"-A {rej} {REJECT_OTHER[family]}"]
        lines += [f"-A {fwd} {ESTABLISHED}", f"-A {inp} {ESTABLISHED}"]
        if family == 4:
            for resolver in self.resolvers:
                lines += [f"-A {fwd} -d {resolver}/32 -p {proto} --dport 53 -j RETURN" for proto in ("udp", "tcp")]
            lines += [f"-A {fwd} -d {cidr} -j {rej}" for cidr in self.blocked]
            for mac, cidrs in sorted(grants.items()):
                match = f"-A {fwd} -m mac --mac-source {mac}"
                lines += [f"{match} -j RETURN"] if cidrs is None else [f"{match} -d {c} -j RETURN" for c in cidrs]
        lines += [f"-A {fwd} -j {rej}", f"-A {inp} -j {rej}", "COMMIT", ""]
        return "\n".join(lines)

    def sync(self, grants_of: Callable[[], Grants], force: bool = False) -> None:
        """Bring the chains in line with `grants_of()` and make sure they are hooked in (again, after a
        flush); `force`: rewrite them even when nothing changed.

        `grants_of` is asked under the lock, which batches creates that arrive together: while one
        rewrite runs the others wait, and the first of them to go next reads every grant added
        meanwhile, so the rest find nothing left to do.
        """
        with self._lock:
            grants = grants_of()
            if not force and grants == self.applied:
                return
            missing = []
            for family in (4, 6) if self.ipv6 else (4,):
                tool = "iptables" if family == 4 else "ip6tables"
                _run([f"{tool}-restore", "--wait", "5", "--noflush"], self.ruleset(grants, family))
                for builtin, chain in self.hooks(family):
                    rule = [builtin, "-i", self.bridge, "-j", chain]
                    if not _succeeds([tool, "-w", "5", "-C", *rule]):
                        _run([tool, "-w", "5", "-I", *rule[:1], "1", *rule[1:]])
                        missing.append(f"{tool} {builtin}")
            if missing and self.applied is not None:
                log.warning("firewall: the jumps into agentbox's chains were gone (%s); restored", ", ".join(missing))
            self.applied = {mac: None if cidrs is None else tuple(cidrs) for mac, cidrs in grants.items()}

    def remove(self) -> None:
        """Unhook and delete the chains (when the workspace network itself goes)."""
        with self._lock:
            for family in (4, 6) if self.ipv6 else (4,):
                tool = "iptables" if family == 4 else "ip6tables"
                for builtin, chain in self.hooks(family):
                    while _succeeds([tool, "-w", "5", "-D", builtin, "-i", self.bridge, "-j", chain]):
                        pass
                chains = (self.forward_chain, self.input_chain, self.reject_chain)
                for chain in chains:
                    _succeeds([tool, "-w", "5", "-F", chain])
                for chain in chains:
                    _succeeds([tool, "-w", "5", "-X", chain])
            self.applied = None

    def resolve(self, entries: Iterable[str]) -> list[str]:
        """The CIDRs an allow list stands for; a 400 for what can never be reached or resolved."""
        return resolve_allow_list(entries, self.blocked, _lookup)


def resolve_allow_list(
    entries: Iterable[str], blocked: Sequence[IPv4Network], lookup: Callable[[str], list[str]]
) -> list[str]:
    """Hostnames become their IPv4 addresses now (not followed later); every result must be reachable."""
    cidrs: list[str] = []
    for entry in entries:
        networks = [IPv4Network(address) for address in _addresses(entry, lookup)]
        for network in networks:
            for bad in blocked:
                if network.overlaps(bad):
                    raise BadRequest(
                        f"network.allow: {entry!r} ({network}) lies in {bad}, which workspaces may never reach "
                        "(private, link-local, metadata or this host's own networks); allow public addresses only"
                    )
            if str(network) not in cidrs:
                cidrs.append(str(network))
    return cidrs


def _addresses(entry: str, lookup: Callable[[str], list[str]]) -> list[str]:
    """An allow-list entry as CIDRs: itself, or a hostname's IPv4 addresses."""
    try:
        return [str(IPv4Network(entry))]
    except ValueError:
        pass
    try:
        addresses = lookup(entry)
    except OSError as exc:
        raise BadRequest(f"network.allow: cannot resolve {entry!r} ({exc}): check the name") from None
    if not addresses:
        raise BadRequest(f"network.allow: {entry!r} has no IPv4 address")
    return addresses


def _lookup(hostname: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(hostname, None, socket.AF_INET)})


def connected_subnets(route_table: Path = Path("/proc/net/route")) -> list[IPv4Network]:
    """The IPv4 networks this host sits on directly (its LANs and bridges), from the kernel's routes."""
    subnets = []
    for line in route_table.read_text().splitlines()[1:]:
        fields = line.split()
        destination, gateway, mask = (int(fields[i], 16) for i in (1, 2, 7))
        if gateway == 0 and mask != 0:  # directly connected, not the default route
            address = IPv4Address(socket.ntohl(destination))
            netmask = IPv4Address(socket.ntohl(mask))
            subnets.append(IPv4Network(f"{address}/{netmask}", strict=False))
    return subnets


def host_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[IPv4Address, ...]:
    """The host's IPv4 name servers: Docker's embedded DNS forwards workspaces' queries to them."""
    found = []
    for line in resolv_conf.read_text().splitlines() if resolv_conf.exists() else []:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if isinstance(address, IPv4Address) and not address.is_loopback:
                found.append(address)
    return tuple(found)


def _collapse(networks: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    return tuple(ipaddress.collapse_addresses(networks))


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FirewallError(
            f"firewall: `{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}; check that iptables "
            "works here (`iptables -S` as root) and that nothing else holds its lock, then try again"
        )
