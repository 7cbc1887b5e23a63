"""Egress policies (agentbox.egress.rules) and the proxy's first-bytes classifier, without a network."""

from __future__ import annotations

import ssl
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agentbox.egress.naming import answerable
from agentbox.egress.proxy import classify, read_sni
from agentbox.egress.rules import Entry, GitHubGrant, HeaderRule, Policy, fill

LABEL = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
# A top label of letters: an all-digit name ("1.2") reads as an address and is refused as a name.
NAME = st.tuples(st.lists(LABEL, min_size=1, max_size=3), st.text(string.ascii_lowercase, min_size=2, max_size=6)).map(
    lambda parts: ".".join([*parts[0], parts[1]])
)


def decide(policy: dict[str, object], name: str | None, ip: str = "192.0.2.1", port: int = 443) -> tuple[bool, str]:
    decision = Policy.model_validate(policy).decide(name, ip, port)
    return decision.allowed, decision.rule


@given(NAME, LABEL, st.sampled_from(["", "."]), st.booleans())
def test_a_wildcard_matches_any_name_below_it_whatever_the_case_or_trailing_dot(
    base: str, sub: str, dot: str, upper: bool
) -> None:
    name = f"{sub}.{base}{dot}"
    assert decide({"allow": [f"*.{base}"]}, name.upper() if upper else name)[0]


@given(NAME, LABEL)
def test_a_wildcard_never_matches_its_apex_nor_a_name_that_only_ends_alike(base: str, prefix: str) -> None:
    policy = {"allow": [f"*.{base}"]}
    assert not decide(policy, base)[0]
    assert not decide(policy, prefix + base)[0]  # evilexample.com against *.example.com
    assert not decide({"allow": ["*.example.com"]}, "example.com.attacker.net")[0]


@given(NAME, NAME)
def test_an_exact_name_matches_itself_only(allowed: str, other: str) -> None:
    assert decide({"allow": [allowed]}, allowed.upper() + ".")[0]
    assert decide({"allow": [allowed]}, other)[0] == (other == allowed)
    assert not decide({"allow": [allowed]}, "x." + allowed)[0]


@given(st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_a_cidr_matches_exactly_its_addresses(prefix: int, network: int, address: int) -> None:
    import ipaddress

    net = ipaddress.IPv4Network((network, prefix), strict=False)
    ip = ipaddress.IPv4Address(address)
    assert decide({"allow": [str(net)]}, None, str(ip))[0] == (ip in net)


def test_precedence_deny_wins_by_default_and_allow_wins_when_asked() -> None:
    both = {"allow": ["*.example.com"], "deny": ["secret.example.com"]}
    assert decide(both, "secret.example.com") == (False, "deny[0] secret.example.com")
    assert decide(both, "www.example.com") == (True, "allow[0] *.example.com")
    e2b = {"deny": ["0.0.0.0/0"], "allow": ["1.1.1.1"], "precedence": "allow"}
    assert decide(e2b, None, "1.1.1.1") == (True, "allow[0] 1.1.1.1/32")
    assert decide(e2b, None, "1.1.1.2") == (False, "deny[0] 0.0.0.0/0")
    assert decide({}, "example.com") == (False, "default deny")
    assert decide({"default": "allow", "deny": ["10.0.0.0/8"]}, None, "8.8.8.8") == (True, "default allow")


def test_ports_narrow_an_entry_and_names_need_a_name() -> None:
    policy = {"allow": ["example.com:443", {"target": "10.0.0.0/8", "ports": ["5432", "8000-8100"]}]}
    assert decide(policy, "example.com", port=443)[0]
    assert not decide(policy, "example.com", port=80)[0]
    assert decide(policy, None, "10.1.2.3", 8050)[0]
    assert not decide(policy, None, "10.1.2.3", 22)[0]
    # A connection that names nothing (SSH, TLS without SNI) is never matched by a name entry.
    assert not decide({"allow": ["example.com"]}, None, "93.184.216.34")[0]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("*.com", "at least two labels"),
        ("foo*.example.com", "wildcard is only"),
        ("exa mple.com", "not a domain name"),
        ("::1", "IPv4 only"),
        ("10.0.0.0/33", "not an IPv4 address or CIDR"),
        ("example.com:0", "'0' is not a port"),
        ("example.com:70000", "'70000' is not a port"),
        ("example.com:9-1", "'9-1' is not a port"),
        ({"target": "example.com", "port": 1}, "unknown field"),
    ],
)
def test_a_bad_entry_is_refused_naming_it_and_its_place(entry: object, says: str) -> None:
    with pytest.raises(ValidationError) as error:
        Policy.model_validate({"allow": ["fine.example", entry]})
    assert says in str(error.value)
    assert error.value.errors()[0]["loc"][:2] == ("allow", 1)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"Authorization": "Bearer ${secrets.X}"}, "is not a secret placeholder"),
        ({"Authorization": "${e2b.secrets.1X}"}, "is not a secret placeholder"),
        ({"Bad Name": "x"}, "is not a header name"),
        ({"Host": "evil.example"}, "frames or routes"),
        ({"X-A": "a\r\nX-B: b"}, "CR, LF or NUL"),
        ({"X-A": "1", "x-a": "2"}, "given twice"),
    ],
)
def test_a_bad_header_rule_is_refused_naming_it(headers: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError) as error:
        HeaderRule(host="api.example.com", headers=headers)
    assert says in str(error.value)
    with pytest.raises(ValidationError, match="per domain name"):
        HeaderRule(host="10.0.0.0/8", headers={"X-A": "1"})


def test_header_rules_name_their_secrets_and_decide_interception() -> None:
    policy = Policy.model_validate(
        {
            "allow": ["*.example.com"],
            "headers": [{"host": "api.example.com", "headers": {"Authorization": "Bearer ${e2b.secrets.TOKEN}"}}],
        }
    )
    assert policy.secret_names() == {"TOKEN"}
    assert policy.decide("API.example.com", "192.0.2.1", 443).intercept
    assert not policy.decide("www.example.com", "192.0.2.1", 443).intercept
    # A header rule grants nothing: the name must be allowed too (as in E2B).
    alone = Policy.model_validate({"headers": [{"host": "api.other.com", "headers": {"X-A": "1"}}]})
    assert not alone.decide("api.other.com", "192.0.2.1", 443).intercept
    assert fill("Bearer ${e2b.secrets.TOKEN}!", {"TOKEN": "t"}) == "Bearer t!"


def test_a_policy_survives_its_json_form() -> None:
    policy = Policy.model_validate({"allow": ["a.example.com:443", "*.b.example.com", "10.0.0.0/8"], "default": "deny"})
    assert Policy.model_validate(policy.model_dump(mode="json")) == policy
    assert Entry.model_validate("A.Example.COM.").describe() == "a.example.com"


def _client_hello(name: str | None) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context.check_hostname = name is not None
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_first_bytes_say_the_protocol_and_the_name() -> None:
    hello = _client_hello("Api.Example.com")
    assert read_sni(hello) == "Api.Example.com"
    assert classify(hello, final=False) == ("tls", "Api.Example.com")
    assert classify(hello[:60], final=False) is None  # a ClientHello cut short: wait for the rest
    assert classify(_client_hello(None), final=False) == ("tls", None)
    assert classify(b"GET / HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n", final=False) == ("http", "example.com")
    assert classify(b"GET / HTTP/1.1\r\nHost: exa", final=False) is None
    assert classify(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", final=False) == ("http", None)
    assert classify(b"SSH-2.0-OpenSSH_9.2\r\n", final=False) == ("tcp", None)
    assert classify(b"", final=True) == ("tcp", None)  # a server-speaks-first protocol
    assert classify(b"\x16\x03\x01garbage", final=True) == ("tcp", None)


GRANT = {"app": "gh-0123456789abcdef", "repositories": ["octo/hello"], "host": "git.example.com"}


@pytest.mark.parametrize(
    "target",
    [
        b"/octo/hello.git/info/refs?service=git-upload-pack",
        b"/octo/hello/info/refs?service=git-receive-pack",
        b"/OCTO/Hello.git/git-upload-pack",
        b"/octo/hello.git/git-receive-pack",
    ],
)
def test_a_github_grant_lets_through_smart_http_into_its_repositories(target: bytes) -> None:
    assert GitHubGrant.model_validate(GRANT).allows_target(target)


@pytest.mark.parametrize(
    "target",
    [
        b"/octo/other.git/info/refs?service=git-upload-pack",
        b"/octo/hello.git/../other.git/info/refs",
        b"/octo/./hello/../../octo/other.git/info/refs",
        b"/octo/hello%2f..%2fother.git/info/refs",
        b"/octo//hello.git/info/refs",
        b"https://github.example/octo/other.git/info/refs",
        b"/octo/hello.git\\..\\other.git/info/refs",
        b"/octo",
        b"/",
        b"/octo/hello.gitx/info/refs",
        b"/octo/hello\xff/info/refs",
    ],
)
def test_a_github_grant_refuses_every_other_path_and_any_path_a_server_could_read_as_another(target: bytes) -> None:
    assert not GitHubGrant.model_validate(GRANT).allows_target(target)


def test_a_github_grant_allows_its_host_on_its_port_and_restricts_it_however_it_was_allowed() -> None:
    granted = Policy.model_validate({"github": [GRANT]})
    decision = granted.decide("git.example.com", "203.0.113.5", 443)
    assert decision.allowed and decision.github is not None and decision.intercept and decision.by == "name"
    assert not granted.decide("git.example.com", "203.0.113.5", 80).allowed
    assert not granted.decide("other.example.com", "203.0.113.5", 443).allowed
    # Allowed by an entry of its own, the host is still only the granted repositories, with the token.
    wide = Policy.model_validate({"allow": ["*.example.com", "0.0.0.0/0"], "github": [GRANT]})
    assert wide.decide("git.example.com", "203.0.113.5", 443).github is not None
    assert wide.decide("other.example.com", "203.0.113.5", 443).github is None
    # A deny entry refuses it as it refuses an allow entry.
    assert (
        not Policy.model_validate({"deny": ["git.example.com"], "github": [GRANT]})
        .decide("git.example.com", "203.0.113.5", 443)
        .allowed
    )
    assert answerable(granted, "git.example.com") and not answerable(granted, "other.example.com")


def test_a_github_grant_is_of_one_owner_and_names_repositories_as_github_spells_them() -> None:
    with pytest.raises(ValidationError, match="one owner per grant"):
        GitHubGrant.model_validate({**GRANT, "repositories": ["octo/a", "other/b"]})
    for bad in (["octo"], ["octo/a/b"], ["-octo/a"], []):
        with pytest.raises(ValidationError):
            GitHubGrant.model_validate({**GRANT, "repositories": bad})
