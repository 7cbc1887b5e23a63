"""The host firewall around the workspace network: what a workspace may reach.

Four iptables chains per workspace network, owned by agentbox:

- `AGENTBOX-FWD-<network>`, hooked from DOCKER-USER for traffic from the bridge, is what a
  workspace may reach through the host: never the addresses in `blocked` (private ranges,
  link-local and metadata addresses, the host's own networks); then whatever
  `AGENTBOX-GRANT-<network>` lets through.
- `AGENTBOX-GRANT-<network>` holds one rule per workspace (known by the MAC address it was
  created with; one per CIDR for an allow list) and rejects the rest. A workspace's rules are
  inserted at its create and deleted at its removal, so a change costs the same whether 1 or
  200 workspaces are on the network; changes that arrive together share one `iptables-restore`.
- `AGENTBOX-IN-<network>`, hooked from INPUT, rejects every connection a workspace opens
  to the host itself (the API, the database, anything listening on any host address);
  answers to connections the host opened pass.

The whole set is rewritten (one atomic `iptables-restore`) at start-up and every few seconds
(`restore`), so that it comes back after a firewall flush. Blocked connections are rejected,
not dropped, so that they fail at once (TCP with a reset, the rest with an ICMP error;
`AGENTBOX-REJ-<network>`). DNS to the host's resolvers is let through (Docker's embedded DNS
forwards workspaces' queries from their own network namespace). IPv6 is not routed for
workspaces: every IPv6 packet from the bridge is rejected.
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
Grant = tuple[str, ...] | None


class _Revoked:
    """A workspace with no rules (a sentinel: None already means "the public internet")."""


REVOKED = _Revoked()


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
    #: What the chains hold (or will, once a pending change is written): MAC address -> grant.
    grants: dict[str, Grant] = field(default_factory=dict, init=False)
    _written: bool = field(default=False, init=False, repr=False)
    # Changes wait here for the next writer, so that concurrent creates share one iptables-restore.
    _pending: dict[str, Grant | _Revoked] = field(default_factory=dict, init=False, repr=False)
    _pending_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
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
    def grant_chain(self) -> str:
        return f"AGENTBOX-GRANT-{self.tag}"

    @property
    def input_chain(self) -> str:
        return f"AGENTBOX-IN-{self.tag}"

    @property
    def reject_chain(self) -> str:
        return f"AGENTBOX-REJ-{self.tag}"

    @property
    def chains(self) -> tuple[str, ...]:
        return (self.forward_chain, self.grant_chain, self.input_chain, self.reject_chain)

    def hooks(self, family: int) -> list[tuple[str, str]]:
        """(built-in chain, our chain) jumps, for IPv4 (4) or IPv6 (6)."""
        # IPv4 goes through DOCKER-USER, which Docker keeps first in FORWARD; Docker has no
        # IPv6 rules of its own here, so IPv6 hooks straight into FORWARD.
        forward = "DOCKER-USER" if family == 4 else "FORWARD"
        return [(forward, self.forward_chain), ("INPUT", self.input_chain)]

    def ruleset(self, grants: Grants, family: int = 4) -> str:
        """The chains' whole contents, in iptables-restore's format (declaring a chain empties it)."""
        fwd, grant, inp, rej = self.chains
        lines = ["*filter", *(f":{chain} - [0:0]" for chain in self.chains)]
        lines += [f"-A {rej} {REJECT_TCP}", f"-A {rej} {REJECT_OTHER[family]}"]
        lines += [f"-A {fwd} {ESTABLISHED}", f"-A {inp} {ESTABLISHED}"]
        if family == 4:
            for resolver in self.resolvers:
                lines += [f"-A {fwd} -d {resolver}/32 -p {proto} --dport 53 -j RETURN" for proto in ("udp", "tcp")]
            lines += [f"-A {fwd} -d {cidr} -j {rej}" for cidr in self.blocked]
            for mac, cidrs in sorted(grants.items()):
                lines += [f"-A {grant} {rule}" for rule in _grant_rules(mac, cidrs)]
        lines += [f"-A {fwd} -j {grant}"]
        # A grant's RETURN leaves the grant chain at the end of the forward chain, so the packet goes
        # on through Docker's own rules; whatever no grant matched is rejected here.
        lines += [f"-A {grant} -j {rej}", f"-A {inp} -j {rej}", "COMMIT", ""]
        return "\n".join(lines)

    def grant(self, mac: str, cidrs: Sequence[str] | None) -> None:
        """Let the workspace with `mac` reach the public internet (`cidrs` None) or only `cidrs`."""
        self._change(mac, None if cidrs is None else tuple(cidrs))

    def revoke(self, mac: str) -> None:
        """Remove the workspace's rules (when it is removed); nothing to do if it has none."""
        self._change(mac, REVOKED)

    def _change(self, mac: str, wanted: Grant | _Revoked) -> None:
        with self._pending_lock:
            self._pending[mac] = wanted
        with self._lock:
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return  # another thread's batch carried this change
            lines = []
            for changed, new in batch.items():
                old = self.grants.get(changed, REVOKED)
                if old == new:
                    continue
                if not isinstance(old, _Revoked):
                    lines += [f"-D {self.grant_chain} {rule}" for rule in _grant_rules(changed, old)]
                    del self.grants[changed]
                if not isinstance(new, _Revoked):
                    # At the top, before the chain's final reject; the order of grants does not matter.
                    lines += [f"-I {self.grant_chain} 1 {rule}" for rule in _grant_rules(changed, new)]
                    self.grants[changed] = new
            if not lines:
                return
            try:
                _run(["iptables-restore", "--wait", "5", "--noflush"], "\n".join(["*filter", *lines, "COMMIT", ""]))
            except FirewallError as exc:
                # A rule to delete was gone (a flush?) or iptables hiccupped: write the whole set instead.
                log.info("firewall: an incremental change failed (%s); rewriting the chains", exc.detail)
                self._write()

    def restore(self) -> None:
        """Rewrite the chains from the grants and hook them in again (after a flush); at start-up and every few
        seconds. The grants are what `grant` and `revoke` made them, or `adopt` at start-up."""
        with self._lock:
            self._write()

    def adopt(self, grants: Grants) -> None:
        """Take `grants` (the workspaces already on the network, at start-up) as the whole set, and write it."""
        with self._lock:
            self.grants = {mac: None if cidrs is None else tuple(cidrs) for mac, cidrs in grants.items()}
            self._write()

    def _write(self) -> None:
        missing = []
        for family in (4, 6) if self.ipv6 else (4,):
            tool = "iptables" if family == 4 else "ip6tables"
            _run([f"{tool}-restore", "--wait", "5", "--noflush"], self.ruleset(self.grants, family))
            for builtin, chain in self.hooks(family):
                rule = [builtin, "-i", self.bridge, "-j", chain]
                if not _succeeds([tool, "-w", "5", "-C", *rule]):
                    _run([tool, "-w", "5", "-I", *rule[:1], "1", *rule[1:]])
                    missing.append(f"{tool} {builtin}")
        if missing and self._written:
            log.warning("firewall: the jumps into agentbox's chains were gone (%s); restored", ", ".join(missing))
        self._written = True

    def remove(self) -> None:
        """Unhook and delete the chains (when the workspace network itself goes)."""
        with self._lock:
            for family in (4, 6) if self.ipv6 else (4,):
                tool = "iptables" if family == 4 else "ip6tables"
                for builtin, chain in self.hooks(family):
                    while _succeeds([tool, "-w", "5", "-D", builtin, "-i", self.bridge, "-j", chain]):
                        pass
                for chain in self.chains:
                    _succeeds([tool, "-w", "5", "-F", chain])
                for chain in self.chains:
                    _succeeds([tool, "-w", "5", "-X", chain])
            self.grants = {}
            self._written = False

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


def _grant_rules(mac: str, cidrs: Sequence[str] | None) -> list[str]:
    """One workspace's rules in the grant chain, after the chain's name."""
    # In iptables' own order (`iptables -S` prints them so), so that listings read back the same.
    match = f"-m mac --mac-source {mac} -j RETURN"
    return [match] if cidrs is None else [f"-d {cidr} {match}" for cidr in cidrs]


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
