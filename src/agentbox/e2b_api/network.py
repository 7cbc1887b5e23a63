"""E2B's sandbox `network` (and `allow_internet_access`) as agentbox egress policies, and back.

Pure: no I/O. The E2B routes (control.py) call `from_create` on `POST /v2/sandboxes`, `from_update` on
`PUT /sandboxes/{id}/network` (what the SDK's `update_network` sends), and `to_info` for the `network`
and `allowInternetAccess` of `GET /sandboxes/{id}`. A policy is "none", "egress" or a dict in the
shape of egress.rules.Policy; every E2B field either maps exactly or raises `Refused`, which the
routes answer as E2B's 400 naming the field.

E2B's meaning (its SDK's and OpenAPI's words, SDK 2.63.0) and how each maps:

- ``allowOut``/``denyOut``: IPv4 addresses, CIDRs and names (``example.com``, ``*.example.com``),
  no ports. "Allowed entries always take precedence over denied entries" and "if allow_out is not
  specified, all outbound traffic is allowed": ``precedence="allow"``, ``default="allow"``, the lists
  as they are. ``0.0.0.0/0`` (the SDK's ``ALL_TRAFFIC``) in ``denyOut`` denies what ``allowOut`` does
  not name. E2B takes no names in ``denyOut``; agentbox enforces them, so they are accepted.
- ``allowInternetAccess: false`` "behaves the same as specifying denyOut 0.0.0.0/0": it is added to
  ``denyOut`` (``allowOut`` still wins over it, as in E2B).
- Nothing allowed, everything denied and no header rules, on create: "none" (no interface at all;
  the only case where gVisor can keep a paused sandbox's memory; such a sandbox cannot be given a
  network by `update_network` later: the core refuses a change to or from "none"). On update it is
  the policy that denies ``0.0.0.0/0``. Nothing restricted at all: "egress" (or, on create, None:
  nothing said, the server's default network applies, as before).
- ``dnsServers``: "DNS servers the sandbox can reach when allowOut contains a domain ... all traffic
  to it is allowed", 8.8.8.8 when left out. Mapped exactly: each is an allow entry for every port,
  added when ``allowOut`` has a name. They are written ``{"target": ip, "ports": ["1-65535"]}``,
  a form E2B's own entries (no ports) never take, so `to_info` tells them apart. (A workspace's
  DNS, port 53 to any address, is answered by agentbox's resolver anyway, by its policy.)
- ``rules``: ``{host: [{"transform": {"headers": {...}}}, ...]}``, headers set on HTTPS requests to
  ``host`` (exact or ``*.`` wildcard; keys lower-cased), values with ``${e2b.secrets.NAME}``
  placeholders. A host's rules become one header rule, later headers replacing earlier ones of the
  same name. E2B applies only the most specific matching host ("matching rule sets are not
  merged"), agentbox's proxy every matching one: two hosts that can match the same name are
  refused. ``${e2b.identity.tokens.NAME}`` (workload identity, `iam`) is refused: not offered.
- ``allowPublicTraffic`` is about the sandbox's own URLs, not egress: returned apart, the
  workspace's `public_ports` (its ports answer without the traffic token).
- ``maskRequestHost`` (the Host header a request to the sandbox's URL arrives with, ``${PORT}``
  its port): a ``host[:port]`` with at most one ``${PORT}``, kept with the workspace
  (`request_host`); agentbox's proxy sends it, ``${PORT}`` replaced, on every request it relays to
  one of the workspace's ports (left out: ``localhost:<port>``, as before). Only the Host the app
  sees changes: which workspace and port a request reaches is decided from the URL the client
  used, before and apart from the mask. ``httpsPorts`` (the proxy reaching a port over TLS) and
  ``egressProxy`` (a SOCKS5 proxy of the caller's) are refused unless empty.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from agentbox.egress.rules import Entry, HeaderRule, Policy, name_matches
from agentbox.web.proxy import PORT_PLACEHOLDER

#: E2B's "all traffic" (`e2b.sandbox.network.ALL_TRAFFIC`).
ALL_TRAFFIC = "0.0.0.0/0"
#: E2B's name server when `dnsServers` is left out.
DEFAULT_DNS = ("8.8.8.8",)
MAX_DNS_SERVERS = 10
#: The ports of an allow entry made from `dnsServers` (see the module's docstring).
DNS_PORTS = ("1-65535",)
#: The longest `maskRequestHost`: a DNS name's 253 characters, a colon and a port.
MAX_HOST_MASK = 259
#: A name (labels of letters, digits, `-` and `_`; a trailing dot), an IPv4 address, or an IPv6 one
#: in brackets; then perhaps a port. Matched with `${PORT}` replaced by a port number.
_HOST_MASK = re.compile(
    r"(?P<host>(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
_IAM_PLACEHOLDER = "${e2b.identity."

AgentboxPolicy = Literal["none", "egress"] | dict[str, Any]


class Refused(ValueError):
    """An E2B network field agentbox cannot honour as asked: the E2B routes answer it with a 400."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"network.{field}: {reason}")
        self.field = field
        self.reason = reason


class _Transform(BaseModel):
    model_config = ConfigDict(extra="forbid")

    headers: dict[str, str] | None = None


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transform: _Transform | None = None


class _Egress(BaseModel):
    """The fields E2B's create and update bodies share."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    allow_out: list[str] | None = Field(None, alias="allowOut")
    deny_out: list[str] | None = Field(None, alias="denyOut")
    dns_servers: list[str] | None = Field(None, alias="dnsServers")
    egress_proxy: Any = Field(None, alias="egressProxy")
    rules: dict[str, list[_Rule]] | None = None


class _Create(_Egress):
    """E2B's `SandboxNetworkConfig` (the create body's `network`)."""

    allow_public_traffic: bool | None = Field(None, alias="allowPublicTraffic")
    mask_request_host: str | None = Field(None, alias="maskRequestHost")
    https_ports: list[int] | None = Field(None, alias="httpsPorts")


class _Update(_Egress):
    """E2B's `SandboxNetworkUpdateConfig` (its SDK sends `allow_internet_access` in snake case)."""

    allow_internet_access: bool | None = Field(
        None, validation_alias=AliasChoices("allow_internet_access", "allowInternetAccess")
    )


@dataclass(frozen=True)
class Mapped:
    """What an E2B create body asks of a workspace's network."""

    #: None: nothing said, the server's default network.
    policy: AgentboxPolicy | None
    #: None: not said (E2B's default: public).
    public_ports: bool | None
    #: `maskRequestHost`, checked (`${PORT}` still in it); None: not said (``localhost:<port>``).
    request_host: str | None = None


def from_create(network: Mapping[str, Any] | None, allow_internet_access: bool | None = None) -> Mapped:
    """The create body's `network` and `allow_internet_access` (None: not sent)."""
    body = _parse(_Create, network or {})
    request_host = None if body.mask_request_host is None else host_mask(body.mask_request_host)
    if body.https_ports:
        raise Refused("httpsPorts", "agentbox reaches a sandbox's ports over plain HTTP only; serve HTTP on them")
    said = allow_internet_access is False or any(
        v is not None for v in (body.allow_out, body.deny_out, body.rules, body.dns_servers, body.egress_proxy)
    )
    policy = _policy(body, allow_internet_access is not False, create=True) if said else None
    return Mapped(policy, body.allow_public_traffic, request_host)


def host_mask(mask: str) -> str:
    """`mask` if it is a Host header agentbox can send (see the module's docstring); Refused otherwise.

    Strict because it goes into a header of every request relayed to the sandbox: no CR, LF, space or
    other character a Host cannot hold, so it can only ever be that one header's value."""
    if not mask or len(mask) > MAX_HOST_MASK:
        raise Refused("maskRequestHost", f"give a host[:port] of 1 to {MAX_HOST_MASK} characters")
    if mask.count(PORT_PLACEHOLDER) > 1:
        raise Refused("maskRequestHost", f"{PORT_PLACEHOLDER} may appear once at most (it is the sandbox's port)")
    # 65535: the longest a port makes it, so the length of every Host it becomes is checked too.
    found = _HOST_MASK.fullmatch(mask.replace(PORT_PLACEHOLDER, "65535"))
    if found is None:
        raise Refused(
            "maskRequestHost",
            f"{mask!r} is not a host[:port] (letters, digits, '.', '-', '_', and {PORT_PLACEHOLDER} for the "
            "sandbox's port, e.g. '${PORT}-app.example.com'; no scheme, path, spaces or line breaks)",
        )
    if len(found.group("host")) > 253:
        raise Refused("maskRequestHost", f"its host is longer than 253 characters (with {PORT_PLACEHOLDER} as 65535)")
    port = found.group("port")
    if port is not None and PORT_PLACEHOLDER not in mask.rsplit(":", 1)[1] and not 1 <= int(port) <= 65535:
        raise Refused("maskRequestHost", f"port {port}: a port is a number from 1 to 65535")
    return mask


def from_update(body: Mapping[str, Any]) -> AgentboxPolicy:
    """The body of `PUT /sandboxes/{id}/network`: it replaces the whole policy (a field left out is cleared).

    Never "none": a running workspace cannot move to or from it (no interface), so denying everything
    at run time is the policy ``deny 0.0.0.0/0``, which the proxy enforces as well."""
    parsed = _parse(_Update, body)
    return _policy(parsed, parsed.allow_internet_access is not False, create=False)


def to_info(
    policy: AgentboxPolicy | Policy | None, public_ports: bool, request_host: str | None = None
) -> dict[str, Any]:
    """`allowInternetAccess` and `network` of E2B's sandbox detail for a workspace with `policy`.

    `policy` may be any agentbox policy, the old allow list (`{"allow": [...]}`) too. A policy made
    through agentbox's own API with ports or `precedence="deny"` has no E2B form: it is shown as its
    lists (an entry with ports as ``target:ports``), which E2B's rule (allow wins) may read otherwise.
    """
    network: dict[str, Any] = {"allowPublicTraffic": public_ports}
    if request_host is not None:
        network["maskRequestHost"] = request_host
    if policy is None or policy == "egress":
        return {"allowInternetAccess": True, "network": network}
    if policy == "none":
        return {"allowInternetAccess": False, "network": {**network, "denyOut": [ALL_TRAFFIC]}}
    parsed = Policy.model_validate(policy)
    allow = [e for e in parsed.allow if not _is_dns(e)]
    deny = [_e2b_entry(e) for e in parsed.deny]
    denies_all = parsed.default == "deny" or any(_is_all(e) for e in parsed.deny)
    if parsed.default == "deny" and not any(_is_all(e) for e in parsed.deny):
        deny.append(ALL_TRAFFIC)
    if allow:
        network["allowOut"] = [_e2b_entry(e) for e in allow]
    if deny:
        network["denyOut"] = deny
    if any(e.kind != "cidr" for e in allow):
        network["dnsServers"] = [str(e.network.network_address) for e in parsed.allow if _is_dns(e) and e.network]
    if parsed.headers:
        rules: dict[str, list[dict[str, Any]]] = {}
        for rule in parsed.headers:
            rules.setdefault(rule.host, []).append({"transform": {"headers": dict(rule.headers)}})
        network["rules"] = rules
    return {"allowInternetAccess": not denies_all, "network": network}


def _parse(model: type[_Egress], body: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "network"
        if first["type"] == "extra_forbidden":
            raise Refused(where, "not a field of E2B's network that agentbox knows") from None
        raise Refused(where, first["msg"]) from None


def _policy(body: _Egress, internet: bool, create: bool) -> AgentboxPolicy:
    if body.egress_proxy not in (None, {}):
        raise Refused(
            "egressProxy", "agentbox does not tunnel a sandbox's egress through a SOCKS5 proxy of the caller's"
        )
    allow = [_entry("allowOut", i, value) for i, value in enumerate(body.allow_out or [])]
    deny = [_entry("denyOut", i, value) for i, value in enumerate(body.deny_out or [])]
    if not internet and not any(_is_all(e) for e in deny):
        deny.append(Entry(target=ALL_TRAFFIC))
    headers = _header_rules(body.rules or {})
    if any(e.kind != "cidr" for e in allow):
        allow.extend(Entry(target=ip, ports=DNS_PORTS) for ip in _dns_servers(body.dns_servers))
    elif body.dns_servers is not None:
        _dns_servers(body.dns_servers)  # still checked, though it grants nothing without a name
    if not allow and not headers:
        if any(_is_all(e) for e in deny) and create:
            return "none"
        if not deny:
            return "egress"
    policy: dict[str, Any] = {
        "allow": [_dumped(e) for e in allow],
        "deny": [_dumped(e) for e in deny],
        "default": "allow",
        "precedence": "allow",
        "headers": headers,
    }
    try:
        Policy.model_validate(policy)
    except ValidationError as error:
        first = error.errors()[0]
        field = _FIELDS.get(str(first["loc"][0]), "network") if first["loc"] else "network"
        raise Refused(field, first["msg"].removeprefix("Value error, ")) from None
    return policy


#: A Policy's fields as E2B names them (for what only the whole policy's limits refuse).
_FIELDS = {"allow": "allowOut", "deny": "denyOut", "headers": "rules"}


def _entry(field: str, index: int, value: str) -> Entry:
    # As a target only: E2B's entries have no ports, so "host:443" is refused rather than read as one.
    try:
        return Entry.model_validate({"target": value})
    except ValidationError as error:
        raise Refused(f"{field}[{index}]", _reason(error)) from None


def _dns_servers(servers: list[str] | None) -> list[str]:
    if servers is None:
        return list(DEFAULT_DNS)
    if len(servers) > MAX_DNS_SERVERS:
        raise Refused("dnsServers", f"at most {MAX_DNS_SERVERS} servers")
    for index, server in enumerate(servers):
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            raise Refused(f"dnsServers[{index}]", f"{server!r} is not an IPv4 address") from None
    return list(dict.fromkeys(servers))


def _header_rules(rules: dict[str, list[_Rule]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, str]] = {}
    for host, host_rules in rules.items():
        key = host.strip().lower()
        headers: dict[str, str] = {}
        for rule in host_rules:
            for name, value in ((rule.transform and rule.transform.headers) or {}).items():
                if _IAM_PLACEHOLDER in value:
                    raise Refused(
                        f"rules.{host}",
                        f"header {name!r} names a workload identity token: agentbox does not offer `iam`; "
                        "use a secret (${e2b.secrets.NAME})",
                    )
                # A later transform replaces an earlier header of the same name (case-insensitive).
                for old in [k for k in headers if k.lower() == name.lower()]:
                    del headers[old]
                headers[name] = value
        try:
            # A host whose rules set no header sets nothing, but its name is checked all the same.
            parsed = HeaderRule.model_validate({"host": key, "headers": headers or {"x": ""}})
        except ValidationError as error:
            raise Refused(f"rules.{host}", _reason(error)) from None
        if parsed.host in merged:
            raise Refused(f"rules.{host}", f"{host!r} is given twice (hosts are compared in lower case)")
        merged[parsed.host] = headers
    hosts = [h for h, headers in merged.items() if headers]
    for i, first in enumerate(hosts):
        for second in hosts[i + 1 :]:
            if _overlap(first, second):
                raise Refused(
                    f"rules.{second}",
                    f"{first!r} and {second!r} can match the same name: E2B applies only the more specific, "
                    "agentbox's proxy would apply both; give headers for one of them",
                )
    return [{"host": h, "headers": merged[h]} for h in hosts]


def _overlap(a: str, b: str) -> bool:
    """Whether host patterns `a` and `b` (exact or `*.`) both match some name."""
    wild_a, wild_b = a.startswith("*."), b.startswith("*.")
    base_a, base_b = a.removeprefix("*."), b.removeprefix("*.")
    if wild_a and wild_b:
        return name_matches(True, base_a, base_b) or name_matches(True, base_b, base_a) or base_a == base_b
    if wild_a:
        return name_matches(True, base_a, base_b)
    if wild_b:
        return name_matches(True, base_b, base_a)
    return a == b


def _reason(error: ValidationError) -> str:
    message: str = error.errors()[0]["msg"]
    return message.removeprefix("Value error, ")


def _is_all(entry: Entry) -> bool:
    return entry.kind == "cidr" and entry.network is not None and entry.network.prefixlen == 0 and not entry.ports


def _is_dns(entry: Entry) -> bool:
    one_address = entry.network is not None and entry.network.prefixlen == 32
    return entry.kind == "cidr" and one_address and entry.ports == DNS_PORTS


def _dumped(entry: Entry) -> str | dict[str, Any]:
    return entry.target if entry.ports is None else {"target": entry.target, "ports": list(entry.ports)}


def _e2b_entry(entry: Entry) -> str:
    return entry.target if entry.ports is None else entry.describe()
