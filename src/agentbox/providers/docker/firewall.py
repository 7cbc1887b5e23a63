"""The host firewall around the workspace network: what a workspace may reach.

Four iptables chains per workspace network, owned by agentbox:

- `AGENTBOX-FWD-<network>`, hooked from DOCKER-USER for traffic from the bridge, is what a
  workspace may reach through the host: never the addresses in `blocked` (private ranges,
  link-local and metadata addresses, the host's own networks); then whatever
  `AGENTBOX-GRANT-<network>` lets through.
- `AGENTBOX-GRANT-<network>` holds one rule per workspace (known by the MAC address it was
  created with; one per CIDR for an allow list) and rejects the rest.
- `AGENTBOX-IN-<network>`, hooked from INPUT, rejects every connection a workspace opens
  to the host itself (the API, the database, anything listening on any host address);
  answers to connections the host opened pass.

Blocked connections are rejected, not dropped, so that they fail at once (TCP with a reset, the
rest with an ICMP error; `AGENTBOX-REJ-<network>`). DNS to the host's resolvers is let through
(Docker's embedded DNS forwards workspaces' queries from their own network namespace). IPv6 is
not routed for workspaces: every IPv6 packet from the bridge is rejected.

Nothing here rewrites the whole set in the normal course, so no cost grows with the number of
workspaces on the network:

- A workspace's rules are inserted at its create and deleted at its removal, in one
  `iptables-restore --noflush` of just those lines (one transaction: a workspace whose grant
  changes is never open halfway); changes that arrive together share one.
- `restore`, every few seconds, reads the chains (one `iptables-save -t filter` per address
  family, no write) and compares them with what they should hold; only what differs is written,
  again in one transaction per family: a chain that is gone is made again whole, a fixed chain
  (forward, input, reject) that differs is rewritten, a workspace's missing rule is inserted, a
  rule in the grant chain that is not a grant is deleted, a missing jump is put back.
- `adopt`, at start-up, does the same against the workspaces found on the engine, and also
  deletes grants of MAC addresses it does not know (workspaces removed while no server ran).
  `restore` leaves those alone: replicas of one deployment share the network, each knowing the
  grants it made, and a MAC address is never reused (it is derived from the workspace's id).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from agentbox.egress.supervisor import name_servers
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
#: A grant rule as iptables lists it, normalized (`_norm`): whose MAC address it lets through.
GRANT_RULE = re.compile(r"(?:-d \S+ )?-m mac --mac-source (?P<mac>[0-9a-f:]{17}) -j return")


class FirewallError(AgentboxError):
    """The firewall rules cannot be installed; the message says what to fix."""

    status_code = 503  # iptables busy or broken: nothing was made, the request can be retried


@dataclass
class _Batch:
    """Changes written together by whichever of their callers gets the lock first; each caller learns the outcome."""

    changes: dict[str, Grant | _Revoked] = field(default_factory=dict)
    done: bool = False
    error: str | None = None


@dataclass
class Firewall:
    bridge: str  # the network's Linux bridge, e.g. br-0123456789ab
    tag: str  # names the chains: the network id's first 12 hex digits
    blocked: tuple[IPv4Network, ...]
    resolvers: tuple[IPv4Address, ...]
    ipv6: bool = True
    #: What the chains should hold (the kernel catches up within the call that changed it): MAC address -> grant.
    grants: dict[str, Grant] = field(default_factory=dict, init=False)
    _checked: bool = field(default=False, init=False, repr=False)
    # Revoked MAC addresses whose rules may still be there (not ours, or their deletion failed): the next
    # listing deletes them, even if another process made them.
    _dropping: set[str] = field(default_factory=set, init=False, repr=False)
    # Changes wait here for the next writer, so that concurrent creates share one iptables-restore.
    _batch: _Batch = field(default_factory=_Batch, init=False, repr=False)
    _batch_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def for_network(cls, network: Mapping[str, object]) -> Firewall:
        """The firewall of a Docker bridge network (as inspected), with this host's addresses blocked."""
        name = network.get("Name")
        if os.geteuid() != 0 or shutil.which("iptables-restore") is None or shutil.which("iptables-save") is None:
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
            ipv6=shutil.which("ip6tables-restore") is not None and shutil.which("ip6tables-save") is not None,
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

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)

    def hooks(self, family: int) -> list[tuple[str, str]]:
        """(built-in chain, our chain) jumps, for IPv4 (4) or IPv6 (6)."""
        # IPv4 goes through DOCKER-USER, which Docker keeps first in FORWARD; Docker has no
        # IPv6 rules of its own here, so IPv6 hooks straight into FORWARD.
        forward = "DOCKER-USER" if family == 4 else "FORWARD"
        return [(forward, self.forward_chain), ("INPUT", self.input_chain)]

    def rules(self, grants: Grants, family: int = 4) -> dict[str, list[str]]:
        """Each chain's rules in order, after `-A <chain> `, spelled as iptables lists them (so that a
        listing compares equal to what was written)."""
        fwd, grant, inp, rej = self.chains
        forward = [ESTABLISHED]
        granted: list[str] = []
        if family == 4:
            for resolver in self.resolvers:
                forward += [f"-d {resolver}/32 -p {proto} -m {proto} --dport 53 -j RETURN" for proto in ("udp", "tcp")]
            forward += [f"-d {cidr} -j {rej}" for cidr in self.blocked]
            for mac, cidrs in sorted(grants.items()):
                granted += _grant_rules(mac, cidrs)
        return {
            # A grant's RETURN leaves the grant chain at the end of the forward chain, so the packet goes
            # on through Docker's own rules; whatever no grant matched is rejected at the grant chain's end.
            fwd: [*forward, f"-j {grant}"],
            grant: [*granted, f"-j {rej}"],
            inp: [ESTABLISHED, f"-j {rej}"],
            rej: [REJECT_TCP, REJECT_OTHER[family]],
        }

    def ruleset(self, grants: Grants, family: int = 4) -> str:
        """The chains' whole contents, in iptables-restore's format (declaring a chain empties it)."""
        chains = self.rules(grants, family)
        lines = ["*filter", *(f":{chain} - [0:0]" for chain in chains)]
        lines += [f"-A {chain} {rule}" for chain, rules in chains.items() for rule in rules]
        return "\n".join([*lines, "COMMIT", ""])

    def plan(
        self, saved: str, family: int = 4, *, prune: bool = False, whole: bool = False, drop: Iterable[str] = ()
    ) -> tuple[str | None, list[str]]:
        """What to write (iptables-restore --noflush input, None for nothing) so that the chains as `saved`
        (iptables-save's output for the filter table) hold what they should; and what was wrong, for the log.

        Only what differs is written. In the grant chain, a rule granting a MAC address that `grants` does
        not hold is another process's (a replica of this deployment) and stays, unless `prune` or its MAC is
        in `drop`. `whole`: rewrite the grant chain if it differs at all, rather than patch it.
        """
        present, listed = parse_saved(saved)
        dropped = {mac.lower() for mac in drop}
        declared: list[str] = []
        lines: list[str] = []
        wrong: list[str] = []
        for chain, rules in self.rules(self.grants, family).items():
            have = listed.get(chain, [])
            if chain in present and chain == self.grant_chain:

                def kept(rule: str) -> bool:  # no process of ours grants IPv6: there, every grant is a stray
                    return family == 4 and self._foreign(rule, prune, dropped)

                patch = None if whole else self._patch(have, rules, kept)
                if patch is not None:
                    lines += patch
                    if patch:
                        wrong.append(f"{len(patch)} rule(s) of {chain}")
                    continue
                rules = [*filter(kept, have), *rules]  # ahead of the final reject
            elif chain in present and [_norm(rule) for rule in have] == [_norm(rule) for rule in rules]:
                continue
            declared.append(chain)
            lines += [f"-A {chain} {rule}" for rule in rules]
            wrong.append(f"{chain} {'changed' if chain in present else 'missing'}")
        for builtin, chain in self.hooks(family):
            hook = f"-i {self.bridge} -j {chain}"
            if builtin not in present:
                wrong.append(f"no {builtin} chain to jump from")  # the rest is written all the same
            elif _norm(hook) not in {_norm(rule) for rule in listed.get(builtin, [])}:
                lines.append(f"-I {builtin} 1 {hook}")
                wrong.append(f"the jump from {builtin} to {chain}")
        if not lines:
            return None, wrong
        return "\n".join(["*filter", *(f":{chain} - [0:0]" for chain in declared), *lines, "COMMIT", ""]), wrong

    def _foreign(self, rule: str, prune: bool, dropped: set[str]) -> bool:
        """A grant of a MAC address this process holds none for: another replica's, kept unless pruning."""
        match = GRANT_RULE.fullmatch(_norm(rule))
        return not prune and match is not None and match["mac"] not in self.grants and match["mac"] not in dropped

    def _patch(self, have: list[str], rules: list[str], kept: Callable[[str], bool]) -> list[str] | None:
        """The grant chain's missing rules inserted and its strays deleted (but those `kept`); None when its end
        is not the one final reject (flushed, or tampered with), which a rewrite of the chain repairs."""
        listed = [_norm(rule) for rule in have]
        final = _norm(rules[-1])
        if not listed or listed[-1] != final or listed.count(final) != 1:
            return None
        wanted = {_norm(rule): rule for rule in rules[:-1]}
        seen: set[str] = set()
        lines = []
        for rule, normed in zip(have[:-1], listed[:-1], strict=True):
            if normed in wanted and normed not in seen:
                seen.add(normed)
            elif normed in wanted or not kept(rule):  # doubled, stale, not a grant, or one being pruned
                lines.append(f"-D {self.grant_chain} {rule}")
        # At the top, before the chain's final reject; the order of grants does not matter.
        return lines + [f"-I {self.grant_chain} 1 {rule}" for normed, rule in wanted.items() if normed not in seen]

    def grant(self, mac: str, cidrs: Sequence[str] | None) -> None:
        """Let the workspace with `mac` reach the public internet (`cidrs` None) or only `cidrs`."""
        self._change(mac, None if cidrs is None else tuple(cidrs))

    def revoke(self, mac: str) -> None:
        """Remove the workspace's rules (when it is removed), whoever made them; nothing to do if it has none."""
        self._change(mac, REVOKED)

    def _change(self, mac: str, wanted: Grant | _Revoked) -> None:
        with self._batch_lock:
            batch = self._batch
            batch.changes[mac.lower()] = wanted
        with self._lock:
            if not batch.done:  # else another caller's write carried this change
                with self._batch_lock:
                    self._batch = _Batch()  # what comes in from now on waits for the next writer
                try:
                    self._apply(batch.changes)
                except FirewallError as exc:
                    batch.error = exc.detail
                except BaseException:
                    batch.error = "firewall: writing the rules failed unexpectedly (see the server's log); try again"
                    raise
                finally:
                    batch.done = True
        if batch.error is not None:
            # What the grants say stays wanted: the next `restore` writes it (a failed create revokes its own).
            raise FirewallError(batch.error)

    def _apply(self, changes: Mapping[str, Grant | _Revoked]) -> None:
        lines: list[str] = []
        for mac, new in changes.items():
            old = self.grants.get(mac, REVOKED)
            if isinstance(new, _Revoked):
                if isinstance(old, _Revoked):
                    self._dropping.add(mac)  # no grant of ours: another process's, if any, found by a listing
            else:
                self._dropping.discard(mac)
            if old == new:
                continue
            if not isinstance(old, _Revoked):
                lines += [f"-D {self.grant_chain} {rule}" for rule in _grant_rules(mac, old)]
                del self.grants[mac]
            if not isinstance(new, _Revoked):
                lines += [f"-I {self.grant_chain} 1 {rule}" for rule in _grant_rules(mac, new)]
                self.grants[mac] = new
        if lines:
            try:
                _run(["iptables-restore", "--wait", "5", "--noflush"], "\n".join(["*filter", *lines, "COMMIT", ""]))
                lines = []
            except FirewallError as exc:
                # A rule to delete was gone (a flush?), the chain too, or iptables hiccupped: nothing was written.
                log.info("firewall: a change failed (%s); repairing the chains", exc.detail)
                self._dropping.update(mac for mac, new in changes.items() if isinstance(new, _Revoked))
        if lines or self._dropping:
            self._repair(prune=False, families=self.families if lines else (4,))

    def restore(self) -> None:
        """Check the chains and their jumps against the grants, and write only what differs (after a flush, a
        chain made again whole); at start-up and every few seconds. The grants are what `grant` and `revoke`
        made them, or `adopt` at start-up."""
        with self._lock:
            wrong = self._repair(prune=False)
            if wrong and self._checked:
                log.warning("firewall: %s; restored", ", ".join(wrong))
            self._checked = True

    def adopt(self, grants: Grants) -> None:
        """Take `grants` (the workspaces already on the network, at start-up) as the whole set: write what the
        chains lack and delete the grants of every other MAC address (workspaces removed meanwhile)."""
        with self._lock:
            self.grants = {mac.lower(): None if cidrs is None else tuple(cidrs) for mac, cidrs in grants.items()}
            self._repair(prune=True)
            self._checked = True

    def _repair(self, prune: bool, families: Iterable[int] | None = None) -> list[str]:
        """Read the chains, write what differs (`plan`); what was wrong. Raises FirewallError."""
        wrong = []
        unhooked: list[str] = []
        for family in self.families if families is None else families:
            tool = "iptables" if family == 4 else "ip6tables"
            for whole in (False, True):
                saved = _run([f"{tool}-save", "-t", "filter"])
                text, found = self.plan(saved, family, prune=prune, whole=whole, drop=self._dropping)
                absent = [f"{tool} {builtin}" for builtin, _ in self.hooks(family) if f"\n:{builtin} " not in saved]
                if text is None:
                    break
                try:
                    _run([f"{tool}-restore", "--wait", "5", "--noflush"], text)
                except FirewallError as exc:
                    if whole:
                        raise
                    # A rule to delete went meanwhile, or one iptables cannot read back: read again, rewrite.
                    log.info("firewall: patching the chains failed (%s); rewriting what differs", exc.detail)
                    continue
                wrong += [f"{tool}: {what}" for what in found]
                break
            unhooked += absent
        self._dropping.clear()  # every family's listing had none of their rules left, or they were deleted
        if unhooked:
            # Docker makes DOCKER-USER (and hooks it into FORWARD) when it starts; without it nothing is fenced.
            raise FirewallError(
                f"firewall: no {', '.join(unhooked)} chain to hook the workspace network's rules into (flushed and "
                "deleted?): restart dockerd, which makes DOCKER-USER again; the rest of the rules were restored"
            )
        return wrong

    def remove(self) -> None:
        """Unhook and delete the chains (when the workspace network itself goes)."""
        with self._lock:
            for family in self.families:
                tool = "iptables" if family == 4 else "ip6tables"
                for builtin, chain in self.hooks(family):
                    while _succeeds([tool, "-w", "5", "-D", builtin, "-i", self.bridge, "-j", chain]):
                        pass
                for chain in self.chains:
                    _succeeds([tool, "-w", "5", "-F", chain])
                for chain in self.chains:
                    _succeeds([tool, "-w", "5", "-X", chain])
            self.grants = {}
            self._dropping = set()
            self._checked = False

    def resolve(self, entries: Iterable[str]) -> list[str]:
        """The CIDRs an allow list stands for; a 400 for what can never be reached or resolved."""
        return resolve_allow_list(entries, self.blocked, _lookup)


def parse_saved(saved: str) -> tuple[set[str], dict[str, list[str]]]:
    """iptables-save's output for one table: the chains it has, and each one's rules (after `-A <chain> `)."""
    chains: set[str] = set()
    rules: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith(":"):
            chains.add(line[1:].split(maxsplit=1)[0])
        elif line.startswith("-A "):
            _, chain, *rule = line.split(maxsplit=2)
            rules.setdefault(chain, []).append(rule[0] if rule else "")
    return chains, rules


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
    return tuple(name_servers(resolv_conf))


def _grant_rules(mac: str, cidrs: Sequence[str] | None) -> list[str]:
    """One workspace's rules in the grant chain, after the chain's name."""
    # In iptables' own order (`iptables -S` prints them so), so that listings read back the same.
    match = f"-m mac --mac-source {mac} -j RETURN"
    return [match] if cidrs is None else [f"-d {cidr} {match}" for cidr in cidrs]


def _norm(rule: str) -> str:
    """A rule as compared: iptables-legacy lists MAC addresses in capitals, nf_tables in small letters."""
    return " ".join(rule.lower().split())


def _collapse(networks: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    return tuple(ipaddress.collapse_addresses(networks))


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _run(argv: list[str], stdin: str | None = None) -> str:
    """What the command printed; raises FirewallError when it fails."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FirewallError(
            f"firewall: `{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}; check that iptables "
            "works here (`iptables -S` as root) and that nothing else holds its lock, then try again"
        )
    return done.stdout
