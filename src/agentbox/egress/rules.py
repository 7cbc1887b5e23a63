"""Egress policy: which destinations a workspace may reach, and which requests get headers added.

Pure and typed: no I/O, no settings. The proxy (proxy.py) asks `Policy.decide(name, ip, port)` once per
new connection, where `name` is what the connection itself says it wants (TLS: the SNI; plain HTTP: the
`Host` header; anything else: None) and `ip`/`port` its original destination.

Entries (in `allow` and `deny`), each a string or `{"target": ..., "ports": [...]}`:

- ``example.com``: that name exactly. Names are compared case-insensitively, one trailing dot ignored.
- ``*.example.com``: any name *below* example.com, at any depth (``a.example.com``, ``a.b.example.com``),
  never ``example.com`` itself and never ``evilexample.com`` (list the apex as well to allow it). This
  is how TLS wildcard certificates, Cloudflare's and Vercel's egress rules read a leading ``*.``; E2B's
  documentation does not say. A wildcard needs at least two labels after ``*.`` (``*.com`` is refused).
- ``10.0.0.0/8``, ``1.2.3.4``: destination addresses (IPv4; workspaces have no IPv6). ``0.0.0.0/0`` is
  every destination, E2B's `ALL_TRAFFIC`.
- a port suffix or list: ``example.com:443``, ``10.0.0.0/8:5432``, ``{"target": "example.com",
  "ports": ["80", "8000-8100"]}``; without ports an entry matches every port.

A name entry matches only a connection that names its destination (TLS with SNI, or HTTP with a
`Host`); a connection that names nothing (SSH, a database, TLS without SNI) is matched by address
entries only. An address entry matches the destination address whatever the name.

Precedence, in this order:
1. an entry of the winning list that matches decides (`precedence="deny"`, the default: any matching
   deny entry refuses, even when an allow entry matches too, so ``allow *.example.com`` with ``deny
   secret.example.com`` carves the one name out; `precedence="allow"` is E2B's rule, where ``allow_out``
   beats ``deny_out``, as in ``deny 0.0.0.0/0`` with ``allow 1.1.1.1``);
2. else an entry of the other list that matches decides;
3. else `default` ("deny" unless said otherwise: a policy lists what it allows).
Within a list the first matching entry is the one reported as the rule that decided.

Header rules (`headers`): per domain (exact or wildcard, same matching as above), headers set on every
HTTPS request to a matching name, replacing any the client sent under that name (case-insensitive).
A value may name secrets with E2B's placeholder, ``${e2b.secrets.NAME}`` (what `e2b.Secret.fill(NAME)`
formats), e.g. ``"Bearer ${e2b.secrets.OPENAI_KEY}"``; the proxy asks its resolver for the value per
request, so the secret never enters the workspace. A header rule does not grant egress on its own (as
in E2B): the name must also be allowed. An allowed TLS connection to a name with header rules is
intercepted (the proxy terminates TLS with its own CA, checks the upstream's certificate, and adds the
headers); every other TLS connection passes through undecrypted. Headers are only ever added over
TLS: a plain-HTTP request to such a name is forwarded unchanged, so a secret never crosses the
network in clear text.

GitHub grants (`github`): git over HTTPS to a registered GitHub App's repositories, and only to those, with
the App's installation token put into each request by the proxy (so `git fetch` and `git push` work in the
workspace and no token is ever there). A grant names the App and its repositories; the server fills in the
App's git host (`host`, `port`) from its registration, whatever a caller wrote there. A grant allows its host
and port like an allow entry, and restricts them: every connection to that name and port, however it was
allowed, is intercepted, and a request for any other path than the granted repositories' is answered 403.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ENTRIES = 256
MAX_HEADER_RULES = 64
MAX_HEADERS_PER_RULE = 16
MAX_HEADER_VALUE = 8192
MAX_GITHUB_GRANTS = 8
MAX_GITHUB_REPOSITORIES = 100
#: owner/name as GitHub spells them (wire/github.py's RepoSpec takes the same).
REPOSITORY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$"
#: A secret's name, the one rule for the vault (wire/vault.py reads it: the vault sits above this package)
#: and the placeholders naming them: E2B writes names like ``openai-api-key``, and env-style ones
#: (``OPENAI_API_KEY``) are names too. Never a "/" (the vault's sealing context relies on it) and never a
#: leading "-" (a name is an argument of `agentbox secrets set`).
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
SECRET_NAME = re.compile(SECRET_NAME_PATTERN)
PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")
_SECRET_PREFIX = "e2b.secrets."
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
# RFC 9110's token: what a header's name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
# Headers that frame or route the message (or the connection): replacing them would desynchronise
# the proxy from both ends, so a rule cannot name them.
_FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "expect",
    }
)


def normalize_name(name: str) -> str | None:
    """`name` lower-cased without one trailing dot, or None when it is no host name (e.g. an address)."""
    value = name.strip().lower()
    if value.endswith("."):
        value = value[:-1]
    if not _NAME.match(value) or _is_address(value):
        return None
    return value


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value.replace(".", "").isdigit()
    return True


def _parse_ports(spec: str, entry: str) -> tuple[int, int]:
    low, sep, high = spec.partition("-")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ValueError(f"{entry!r}: {spec!r} is not a port (1-65535) or a range (8000-8100)") from None
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"{entry!r}: {spec!r} is not a port (1-65535) or a range (8000-8100) with low <= high")
    return lo, hi


class Entry(BaseModel):
    """One allow or deny entry: a name, a `*.` wildcard or an IPv4 CIDR, on some ports (None: every port)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, max_length=260)
    ports: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=32)

    # Parsed forms, filled by the validator: never given by a caller (refused), never serialized.
    kind: Literal["name", "wildcard", "cidr"] = Field(default="name", exclude=True)
    name: str = Field(default="", exclude=True)
    network: ipaddress.IPv4Network | None = Field(default=None, exclude=True)
    port_ranges: tuple[tuple[int, int], ...] = Field(default=(), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str):
            target, ports = data, None
            # "host:port" and "cidr:port"; an IPv6 literal has more than one colon and is refused below.
            if data.count(":") == 1:
                target, port = data.split(":")
                ports = (port,)
            return {"target": target, "ports": ports}
        if isinstance(data, dict):
            unknown = set(data) - {"target", "ports"}
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}: an entry has 'target' and 'ports'")
        return data

    @model_validator(mode="after")
    def _parse(self) -> Entry:
        raw = self.target
        ranges = tuple(_parse_ports(str(p), raw) for p in self.ports) if self.ports is not None else ()
        object.__setattr__(self, "port_ranges", ranges)
        value = raw.strip()
        if "/" in value or _is_address(value.rstrip(".")):
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{raw!r} is not an IPv4 address or CIDR (10.0.0.0/8)") from None
            if not isinstance(network, ipaddress.IPv4Network):
                raise ValueError(f"{raw!r}: workspaces have IPv4 only; give an IPv4 address or CIDR")
            object.__setattr__(self, "kind", "cidr")
            object.__setattr__(self, "network", network)
            return self
        wildcard = value.startswith("*.")
        name = normalize_name(value[2:] if wildcard else value)
        if name is None:
            if "*" in value:
                raise ValueError(f"{raw!r}: a wildcard is only '*.' before a domain, as in '*.example.com'")
            raise ValueError(f"{raw!r} is not a domain name (letters, digits, '-', dots; punycode for others)")
        if wildcard and name.count(".") < 1:
            raise ValueError(f"{raw!r}: a wildcard needs at least two labels after '*.' (as in '*.example.com')")
        object.__setattr__(self, "kind", "wildcard" if wildcard else "name")
        object.__setattr__(self, "name", name)
        return self

    def matches(self, name: str | None, ip: ipaddress.IPv4Address | None, port: int) -> bool:
        if self.port_ranges and not any(lo <= port <= hi for lo, hi in self.port_ranges):
            return False
        if self.kind == "cidr":
            return ip is not None and self.network is not None and ip in self.network
        if name is None:
            return False
        return name_matches(self.kind == "wildcard", self.name, name)

    def describe(self) -> str:
        target = {"cidr": str(self.network), "wildcard": f"*.{self.name}"}.get(self.kind, self.name)
        if self.ports is None:
            return target
        return f"{target}:{','.join(self.ports)}"


def name_matches(wildcard: bool, pattern: str, name: str) -> bool:
    """`name` (already normalized) against an exact or `*.` pattern (its part after `*.`)."""
    if not wildcard:
        return name == pattern
    # A label boundary before the suffix: 'evilexample.com' does not end with '.example.com'.
    return name.endswith("." + pattern)


def secret_names_in(value: str) -> list[str]:
    """The secrets a header value names, in order; ValueError naming a placeholder that is not one."""
    names = []
    for match in PLACEHOLDER.finditer(value):
        inner = match.group(1).strip()
        secret = inner.removeprefix(_SECRET_PREFIX)
        if not inner.startswith(_SECRET_PREFIX) or not SECRET_NAME.match(secret):
            raise ValueError(
                f"{match.group(0)!r} is not a secret placeholder: write ${{e2b.secrets.NAME}} with NAME "
                "letters, digits, '_' and '-' (starting with a letter or '_', at most 64)"
            )
        names.append(secret)
    return names


def fill(value: str, secrets: dict[str, str]) -> str:
    """`value` with each `${e2b.secrets.NAME}` replaced by `secrets[NAME]` (KeyError: a missing one)."""
    return PLACEHOLDER.sub(lambda m: secrets[m.group(1).strip().removeprefix(_SECRET_PREFIX)], value)


class HeaderRule(BaseModel):
    """Headers set on HTTPS requests to `host` (an exact name or `*.` wildcard)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=260)
    headers: dict[str, str] = Field(min_length=1, max_length=MAX_HEADERS_PER_RULE)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        entry = Entry(target=value)
        if entry.kind == "cidr":
            raise ValueError(f"{value!r}: header rules are per domain name (TLS is intercepted by name), not address")
        return entry.describe()

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name (RFC 9110 token characters, at most 128)")
            if name.lower() in _FORBIDDEN_HEADERS:
                raise ValueError(f"{name!r} frames or routes the request and cannot be set by a rule")
            if name.lower() in seen:
                raise ValueError(f"{name!r} is given twice (header names are case-insensitive)")
            seen.add(name.lower())
            if len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} has CR, LF or NUL, or is longer than {MAX_HEADER_VALUE}")
            secret_names_in(value)
        return headers

    def matches(self, name: str) -> bool:
        wildcard = self.host.startswith("*.")
        return name_matches(wildcard, self.host[2:] if wildcard else self.host, name)


def github_token_name(app: str) -> str:
    """What the proxy asks its secret resolver for to reach App `app`'s grant: the App's installation token
    (a ':' keeps it apart from every secret's name)."""
    return f"github:{app}"


def github_authorization(token: str) -> str:
    """The `Authorization` value git sends with an installation token (GitHub's smart HTTP)."""
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


class GitHubGrant(BaseModel):
    """git over HTTPS to some of a registered GitHub App's repositories, its token put in by the proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str = Field(pattern=r"^gh-[0-9a-f]{16}$", description="the registered App (GET /api/v1/github/apps)")
    repositories: tuple[Annotated[str, Field(pattern=REPOSITORY_PATTERN)], ...] = Field(
        min_length=1, max_length=MAX_GITHUB_REPOSITORIES, description="owner/name, all of one owner"
    )
    #: The App's git host and port, filled in by the server from the App's registration.
    host: str | None = None
    port: int = Field(default=443, ge=1, le=65535)

    @field_validator("repositories")
    @classmethod
    def _one_owner(cls, repositories: tuple[str, ...]) -> tuple[str, ...]:
        owners = {repository.split("/")[0].lower() for repository in repositories}
        if len(owners) > 1:
            raise ValueError(
                f"repositories of one owner per grant (one App installation): {', '.join(sorted(owners))}; "
                "give a grant per owner"
            )
        return repositories

    def reaches(self, host: str | None, port: int) -> bool:
        return host is not None and host == self.host and port == self.port

    def allows_target(self, target: bytes) -> bool:
        """Whether an HTTP request target is a path into one of the granted repositories (smart HTTP's
        `/OWNER/NAME.git/info/refs`, `/OWNER/NAME/git-upload-pack`, ...). Anything that could be read as
        another path by the server (dot segments, percent-escapes, backslashes, an absolute URL) is not."""
        try:
            text = target.decode("ascii")
        except UnicodeDecodeError:
            return False
        path = text.split("?", 1)[0]
        if not path.startswith("/") or "%" in path or "\\" in path:
            return False
        segments = path.split("/")[1:]
        if len(segments) < 2 or any(segment in ("", ".", "..") for segment in segments[:-1]):
            return False
        wanted = f"{segments[0]}/{segments[1].removesuffix('.git')}".lower()
        return any(wanted == repository.lower() for repository in self.repositories)

    def describe(self) -> str:
        return f"github {self.app} {','.join(self.repositories)}"


@dataclass(frozen=True)
class Decision:
    """What to do with one connection: `rule` says which entry decided (for the audit trail)."""

    allowed: bool
    rule: str
    #: What decided: a name or wildcard entry, an address (CIDR) entry, or the default. A connection
    #: allowed by name is only as good as the name: the proxy checks the address belongs to it.
    by: Literal["name", "address", "default"] = "default"
    #: Terminate TLS and add these headers (only for an allowed connection with a name).
    headers: tuple[HeaderRule, ...] = ()
    #: Terminate TLS, let through only requests into these repositories, with the App's token.
    github: GitHubGrant | None = None

    @property
    def intercept(self) -> bool:
        return self.allowed and (bool(self.headers) or self.github is not None)


Entries = Annotated[list[Entry], Field(max_length=MAX_ENTRIES)]


class Policy(BaseModel):
    """One workspace's egress policy (see the module's docstring for the matching and the precedence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: Entries = Field(default_factory=list)
    deny: Entries = Field(default_factory=list)
    default: Literal["allow", "deny"] = "deny"
    precedence: Literal["allow", "deny"] = "deny"
    headers: list[HeaderRule] = Field(default_factory=list, max_length=MAX_HEADER_RULES)
    github: list[GitHubGrant] = Field(default_factory=list, max_length=MAX_GITHUB_GRANTS)

    def secret_names(self) -> set[str]:
        """Every secret the header rules name (the API checks each exists before accepting the policy)."""
        return {s for rule in self.headers for value in rule.headers.values() for s in secret_names_in(value)}

    def decide(self, name: str | None, ip: str | ipaddress.IPv4Address | None, port: int) -> Decision:
        """The decision for a new connection to `ip`:`port` that names `name` (SNI or Host; None: none)."""
        host = normalize_name(name) if name else None
        address = _address(ip)
        lists = ((True, self.allow), (False, self.deny))
        for allows, entries in lists if self.precedence == "allow" else reversed(lists):
            for index, entry in enumerate(entries):
                if entry.matches(host, address, port):
                    which = "allow" if allows else "deny"
                    by: Literal["name", "address"] = "address" if entry.kind == "cidr" else "name"
                    return self._decision(allows, f"{which}[{index}] {entry.describe()}", host, port, by)
            if allows:  # a grant allows like an entry of the allow list, after it
                for index, grant in enumerate(self.github):
                    if grant.reaches(host, port):
                        return self._decision(True, f"github[{index}] {grant.describe()}", host, port, "name")
        return self._decision(self.default == "allow", f"default {self.default}", host, port, "default")

    def _decision(
        self, allowed: bool, rule: str, host: str | None, port: int, by: Literal["name", "address", "default"]
    ) -> Decision:
        if not allowed or host is None:
            return Decision(allowed, rule, by)
        headers = tuple(r for r in self.headers if r.matches(host))
        return Decision(allowed, rule, by, headers, next((g for g in self.github if g.reaches(host, port)), None))


def _address(ip: str | ipaddress.IPv4Address | None) -> ipaddress.IPv4Address | None:
    if ip is None or isinstance(ip, ipaddress.IPv4Address):
        return ip
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        return parsed.ipv4_mapped
    return parsed


DENY_ALL = Policy()
