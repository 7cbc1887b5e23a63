"""Sending a policy workspace's traffic to the egress proxy and the resolver: iptables NAT on the workspace bridge.

A workspace with an egress policy (issue 29) reaches nothing directly: the firewall (firewall.py) grants it
nothing, and the rules here send its traffic to agentbox's own services on the host:

- DNS (UDP and TCP port 53, to any address, so also what Docker's embedded DNS forwards for it from its
  network namespace) goes to the resolver;
- every other TCP connection goes to the transparent egress proxy, which reads where it was going with
  SO_ORIGINAL_DST and knows the workspace by its source address;
- TCP to a range no workspace may ever reach (`blocked`: private, link-local, metadata, this host's own
  networks) is left alone, so the firewall rejects it as for any workspace: the proxy never opens a
  connection there on a workspace's behalf, whatever its policy says;
- the rest (UDP but DNS, ICMP) is left alone too, and the firewall rejects it at once (no grant).

Three chains per workspace network, named like the firewall's:

- `AGENTBOX-EGR-<tag>` (nat, hooked from PREROUTING for the bridge) selects the workspaces: one rule each,
  matching its address and the MAC address the firewall knows it by (so a workspace cannot take another's
  policy by sending from its address: that is not redirected, and the firewall rejects it), jumping to
- `AGENTBOX-EGP-<tag>` (nat) which rewrites the destination: DNS to the resolver, blocked ranges returned
  untouched, TCP to the proxy (DNAT, so that SO_ORIGINAL_DST reads the original destination).
- `AGENTBOX-EGA-<tag>` (filter, hooked from INPUT *ahead of* the firewall's `AGENTBOX-IN-<tag>`, which
  rejects every connection a workspace opens to the host) accepts what was DNATed to the proxy or the
  resolver. Checked on gVisor: a DNATed SYN that the firewall's input chain rejects with a reset is not
  answered at all (the workspace's connect hangs), so this chain must be in place, and ahead, before any
  workspace is redirected: `install` writes it first. Anything not DNATed to those ports (a workspace
  connecting to the proxy's port directly) is still rejected by the firewall.

IPv6 is no way around: Docker disables IPv6 in the network namespace of a container on a network without
IPv6 (the workspace network has none), and the firewall rejects every IPv6 packet from the bridge.

As in the firewall, a workspace's rule is inserted or deleted alone (one `iptables-restore --noflush` each),
`restore` reads the chains and writes only what differs (a missing chain whole, a missing or misplaced hook),
and `adopt` at start-up also deletes the rules of workspaces it does not know. Connections already open when
a workspace's rule changes keep going where they went (conntrack): the caller adds the rule before the
workspace's first packet, or drops its connections (`conntrack -D -s <address>`) when a policy is set at
run time.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agentbox.providers.docker import firewall as fw
from agentbox.providers.docker.firewall import Firewall, FirewallError

log = logging.getLogger("agentbox.egress_redirect")

NAT, FILTER = "nat", "filter"
#: A selector rule as iptables lists it, normalized: which workspace (address and MAC address) it redirects.
SELECTOR_RULE = re.compile(
    r"-s (?P<ip>\d+\.\d+\.\d+\.\d+)/32 -m mac --mac-source (?P<mac>[0-9a-f:]{17}) -j agentbox-egp-[0-9a-z]+"
)


@dataclass(frozen=True)
class Endpoint:
    """A host address and port that redirected traffic goes to (the proxy's or the resolver's)."""

    address: IPv4Address
    port: int

    def __post_init__(self) -> None:
        # DNAT to a loopback address from a bridge is dropped by the kernel (unless route_localnet is set);
        # 0.0.0.0 is no destination.
        if self.address.is_loopback or self.address.is_unspecified:
            raise ValueError(f"{self.address} cannot be reached from the workspace bridge: use the bridge's gateway")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP/UDP port")

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class EgressRedirect:
    """The redirect chains of one workspace network; `workspaces` is what they should hold (MAC -> address).

    `proxy` and `resolver` must be addresses of this host (the bridge's gateway is the natural one, and the
    services must listen there): what is DNATed to them is accepted in INPUT, and nothing else.
    """

    bridge: str
    tag: str
    blocked: tuple[IPv4Network, ...]
    proxy: Endpoint
    resolver: Endpoint
    #: The firewall's input chain, which ours must come before in INPUT.
    firewall_input_chain: str
    workspaces: dict[str, IPv4Address] = field(default_factory=dict, init=False)
    _checked: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def for_firewall(cls, firewall: Firewall, proxy: Endpoint, resolver: Endpoint) -> EgressRedirect:
        """The redirect of the network `firewall` fences (same bridge, chain tag and blocked ranges)."""
        return cls(
            bridge=firewall.bridge,
            tag=firewall.tag,
            blocked=firewall.blocked,
            proxy=proxy,
            resolver=resolver,
            firewall_input_chain=firewall.input_chain,
        )

    @property
    def select_chain(self) -> str:
        return f"AGENTBOX-EGR-{self.tag}"

    @property
    def rewrite_chain(self) -> str:
        return f"AGENTBOX-EGP-{self.tag}"

    @property
    def accept_chain(self) -> str:
        return f"AGENTBOX-EGA-{self.tag}"

    def hook(self, table: str) -> tuple[str, str]:
        """The (built-in chain, jump) that sends the bridge's packets into our chain of `table`."""
        if table == NAT:
            return "PREROUTING", f"-i {self.bridge} -j {self.select_chain}"
        return "INPUT", f"-i {self.bridge} -j {self.accept_chain}"

    def rules(self, workspaces: Mapping[str, IPv4Address], table: str) -> dict[str, list[str]]:
        """Each of our chains in `table` and its rules in order, after `-A <chain> `, spelled as iptables-save
        lists them (so that a listing compares equal to what was written)."""
        if table == NAT:
            rewrite = [
                f"-p {proto} -m {proto} --dport 53 -j DNAT --to-destination {self.resolver}" for proto in ("udp", "tcp")
            ]
            # Before the proxy's rule: the firewall rejects these, the proxy must never connect there.
            rewrite += [f"-d {cidr} -j RETURN" for cidr in self.blocked]
            rewrite.append(f"-p tcp -j DNAT --to-destination {self.proxy}")
            select = [workspace_rule(mac, ip, self.rewrite_chain) for mac, ip in sorted(workspaces.items())]
            return {self.select_chain: select, self.rewrite_chain: rewrite}
        accept = [
            f"-d {endpoint.address}/32 -p {proto} -m {proto} --dport {endpoint.port} "
            "-m conntrack --ctstate DNAT -j ACCEPT"
            for endpoint, proto in ((self.proxy, "tcp"), (self.resolver, "udp"), (self.resolver, "tcp"))
        ]
        return {self.accept_chain: accept}

    def ruleset(self, workspaces: Mapping[str, IPv4Address], table: str) -> str:
        """Our chains of `table` whole, in iptables-restore's format (declaring a chain empties it)."""
        chains = self.rules(workspaces, table)
        lines = [f"*{table}", *(f":{chain} - [0:0]" for chain in chains)]
        lines += [f"-A {chain} {rule}" for chain, rules in chains.items() for rule in rules]
        return "\n".join([*lines, "COMMIT", ""])

    def plan(
        self, saved: str, table: str, *, prune: bool = False, drop: Iterable[str] = ()
    ) -> tuple[str | None, list[str]]:
        """What to write (iptables-restore --noflush input for `table`, None for nothing) so that our chains as
        `saved` (iptables-save's output for that table) hold what they should; and what was wrong, for the log.

        In the selector chain, the rule of a MAC address `workspaces` does not hold is another replica's and
        stays, unless `prune` or its MAC address is in `drop`; a rule of a known MAC with another address is
        stale and goes. A chain that differs otherwise is rewritten whole (they are short).
        """
        present, listed = fw.parse_saved(saved)
        dropped = {mac.lower() for mac in drop}
        declared: list[str] = []
        lines: list[str] = []
        wrong: list[str] = []
        for chain, rules in self.rules(self.workspaces, table).items():
            have = listed.get(chain, [])
            if chain == self.select_chain:
                rules = [*rules, *(rule for rule in have if self._foreign(rule, prune, dropped))]
                if chain in present and sorted(map(fw._norm, have)) == sorted(map(fw._norm, rules)):
                    continue  # the order of selectors does not matter
            elif chain in present and list(map(fw._norm, have)) == list(map(fw._norm, rules)):
                continue
            declared.append(chain)
            lines += [f"-A {chain} {rule}" for rule in rules]
            wrong.append(f"{chain} {'changed' if chain in present else 'missing'}")
        builtin, hook = self.hook(table)
        hooks = [fw._norm(rule) for rule in listed.get(builtin, [])]
        mine = fw._norm(hook)
        firewall = fw._norm(f"-i {self.bridge} -j {self.firewall_input_chain}")
        misplaced = (
            table == FILTER and mine in hooks and firewall in hooks and hooks.index(mine) > hooks.index(firewall)
        )
        if builtin not in present:
            wrong.append(f"no {builtin} chain to jump from")
        elif mine not in hooks or misplaced or hooks.count(mine) > 1:
            # Ahead of the firewall's jump: its input chain would reject (and not even answer) what is redirected.
            lines += [f"-D {builtin} {hook}"] * hooks.count(mine)
            lines.append(f"-I {builtin} 1 {hook}")
            wrong.append(f"the jump from {builtin} to {self.hook(table)[1].split()[-1]}")
        if not lines:
            return None, wrong
        return "\n".join([f"*{table}", *(f":{chain} - [0:0]" for chain in declared), *lines, "COMMIT", ""]), wrong

    def _foreign(self, rule: str, prune: bool, dropped: set[str]) -> bool:
        """A selector of a MAC address this process holds none for: another replica's, kept unless pruning."""
        match = SELECTOR_RULE.fullmatch(fw._norm(rule))
        return not prune and match is not None and match["mac"] not in self.workspaces and match["mac"] not in dropped

    def install(self) -> None:
        """Write the chains and hooks, with the workspaces already known (none at first).

        The filter table first: a workspace is never redirected before what is redirected is accepted.
        Raises FirewallError when iptables fails.
        """
        with self._lock:
            self._repair(prune=False)

    def add(self, mac: str, address: IPv4Address) -> None:
        """Redirect the workspace with `mac` sending from `address` (its address on the bridge, which may
        change when its container restarts: call again with the new one). Idempotent.

        Raises FirewallError when iptables fails; what should be stays wanted and `restore` writes it.
        """
        mac = mac.lower()
        with self._lock:
            old = self.workspaces.get(mac)
            if old == address:
                return
            self.workspaces[mac] = address
            lines = [f"-I {self.select_chain} 1 {workspace_rule(mac, address, self.rewrite_chain)}"]
            if old is not None:
                lines.insert(0, f"-D {self.select_chain} {workspace_rule(mac, old, self.rewrite_chain)}")
            self._write(lines)

    def remove(self, mac: str) -> None:
        """Stop redirecting the workspace with `mac` (its policy is gone, or it is removed), whoever redirected
        it. Idempotent. Raises FirewallError when iptables fails."""
        mac = mac.lower()
        with self._lock:
            old = self.workspaces.pop(mac, None)
            if old is None:
                self._repair(prune=False, drop={mac}, tables=(NAT,))  # another replica's rule, if any
                return
            self._write([f"-D {self.select_chain} {workspace_rule(mac, old, self.rewrite_chain)}"])

    def _write(self, lines: list[str]) -> None:
        """One workspace's change in one transaction; when it fails (a rule to delete was gone, the chain too),
        the chains are read and repaired instead. Raises FirewallError."""
        try:
            fw._run(["iptables-restore", "--wait", "5", "--noflush"], "\n".join(["*nat", *lines, "COMMIT", ""]))
        except FirewallError as exc:
            log.info("egress redirect: a change failed (%s); repairing the chains", exc.detail)
            self._repair(prune=False)

    def restore(self) -> None:
        """Check the chains and hooks against `workspaces` and write only what differs; every few seconds,
        after the firewall's own `restore` (whose missing INPUT jump it puts at the top, ahead of ours: this
        moves ours back ahead). Raises FirewallError."""
        with self._lock:
            wrong = self._repair(prune=False)
            if wrong and self._checked:
                log.warning("egress redirect: %s; restored", ", ".join(wrong))
            self._checked = True

    def adopt(self, workspaces: Mapping[str, IPv4Address]) -> None:
        """Take `workspaces` (the policy workspaces found on the engine at start-up) as the whole set: write
        what the chains lack and delete every other workspace's rule. Raises FirewallError."""
        with self._lock:
            self.workspaces = {mac.lower(): address for mac, address in workspaces.items()}
            self._repair(prune=True)
            self._checked = True

    def _repair(self, prune: bool, drop: Iterable[str] = (), tables: Iterable[str] = (FILTER, NAT)) -> list[str]:
        wrong: list[str] = []
        for table in tables:
            saved = fw._run(["iptables-save", "-t", table])
            text, found = self.plan(saved, table, prune=prune, drop=drop)
            if text is not None:
                fw._run(["iptables-restore", "--wait", "5", "--noflush"], text)
            wrong += found
            if f"\n:{self.hook(table)[0]} " not in saved:
                raise FirewallError(
                    f"egress redirect: no {table} {self.hook(table)[0]} chain to hook into (flushed and deleted?): "
                    "restart dockerd, which makes its chains again; the rest of the rules were restored"
                )
        return wrong

    def uninstall(self) -> None:
        """Unhook and delete the chains (when the workspace network itself goes): the nat table first, so that
        nothing is redirected to what is no longer accepted. Never raises: what cannot be deleted is not there."""
        with self._lock:
            for table in (NAT, FILTER):
                builtin, hook = self.hook(table)
                while fw._succeeds(["iptables", "-w", "5", "-t", table, "-D", builtin, *hook.split()]):
                    pass
                chains = list(self.rules({}, table))
                for command in ("-F", "-X"):
                    for chain in chains:
                        fw._succeeds(["iptables", "-w", "5", "-t", table, command, chain])
            self.workspaces = {}
            self._checked = False


def workspace_rule(mac: str, address: IPv4Address, rewrite_chain: str) -> str:
    """The one rule that redirects a workspace: its address and its MAC address together, after the chain's name."""
    return f"-s {address}/32 -m mac --mac-source {mac.lower()} -j {rewrite_chain}"
