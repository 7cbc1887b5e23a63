"""GitHub Apps' secrets sealed (AES-256-GCM, a nonce each, bound to their row, rotatable), and the App JWT."""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from agentbox.config import ConfigError, load_settings
from agentbox.github.app import AppCredentials, app_jwt, git_url_of
from agentbox.github.crypto import DecryptError, Keyring, parse_key
from agentbox.github.egress import EgressPolicy, Refused, _forbidden

KEY, OTHER = secrets.token_bytes(32), secrets.token_bytes(32)


@given(st.binary(max_size=4096), st.text(max_size=64))
def test_what_is_sealed_opens_again_in_the_same_place(plaintext: bytes, context: str) -> None:
    keyring = Keyring(KEY)
    assert keyring.open(keyring.seal(plaintext, context), context) == plaintext


def test_each_seal_has_its_own_nonce_and_hides_the_plaintext() -> None:
    keyring = Keyring(KEY)
    first, second = (
        keyring.seal(b"-----BEGIN RSA PRIVATE KEY-----", "x"),
        keyring.seal(b"-----BEGIN RSA PRIVATE KEY-----", "x"),
    )
    assert first != second and b"PRIVATE KEY" not in first


def test_tampered_or_moved_ciphertexts_do_not_open() -> None:
    keyring = Keyring(KEY)
    sealed = keyring.seal(b"secret", "github_apps/gh-1/private_key")
    for position in (1, 6, 20, len(sealed) - 1):  # key id, nonce, ciphertext, tag
        tampered = bytearray(sealed)
        tampered[position] ^= 1
        with pytest.raises(DecryptError):
            keyring.open(bytes(tampered), "github_apps/gh-1/private_key")
    for elsewhere in ("github_apps/gh-2/private_key", "github_apps/gh-1/webhook_secret"):
        with pytest.raises(DecryptError, match="another row"):
            keyring.open(sealed, elsewhere)
    with pytest.raises(DecryptError, match="does not have"):
        Keyring(OTHER).open(sealed, "github_apps/gh-1/private_key")


def test_during_a_rotation_both_keys_open_and_the_new_one_seals() -> None:
    old = Keyring(OTHER).seal(b"secret", "c")
    rotating = Keyring(KEY, OTHER)
    assert rotating.open(old, "c") == b"secret" and not rotating.sealed_with_current(old)
    resealed = rotating.seal(b"secret", "c")
    assert rotating.sealed_with_current(resealed) and Keyring(KEY).open(resealed, "c") == b"secret"


def test_keys_are_32_bytes_in_hex_or_base64_and_errors_never_repeat_them() -> None:
    assert parse_key(KEY.hex()) == KEY
    assert parse_key(base64.b64encode(KEY).decode()) == parse_key(base64.urlsafe_b64encode(KEY).decode()) == KEY
    bad = "not-a-key-but-a-secret-anyway"
    with pytest.raises(ConfigError) as error:
        load_settings(GITHUB_APP_ENCRYPTION_KEY=bad)
    assert "GITHUB_APP_ENCRYPTION_KEY" in str(error.value) and "64 hex digits" in str(error.value)
    assert bad not in str(error.value)
    with pytest.raises(ConfigError, match="GITHUB_APP_ENCRYPTION_OLD_KEY"):
        load_settings(GITHUB_APP_ENCRYPTION_KEY=KEY.hex(), GITHUB_APP_ENCRYPTION_OLD_KEY=KEY.hex()[:-2])
    assert load_settings().keyring is None
    assert load_settings(GITHUB_APP_ENCRYPTION_KEY=KEY.hex()).keyring is not None


def test_the_app_jwt_is_rs256_from_the_app_and_lives_under_ten_minutes() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    app = AppCredentials("gh-1", 31337, "https://api.github.com", pem.decode(), "https://github.com")
    token = app_jwt(app, now=1_800_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(
        token, key.public_key(), algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["iss"] == "31337"
    assert claims["iat"] == 1_800_000_000 - 60  # back-dated for clock skew
    assert claims["exp"] - 1_800_000_000 == 540 and claims["exp"] - claims["iat"] <= 600
    assert git_url_of("https://api.github.com") == "https://github.com"
    assert git_url_of("https://ghe.example.com/api/v3") == "https://ghe.example.com"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4 inside IPv6: judged as the IPv4 it is
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("140.82.112.6", None),  # a public address (GitHub's)
        ("2606:4700::1111", None),
    ],
)
def test_only_public_addresses_are_reachable_for_an_app(address: str, kind: str | None) -> None:
    assert _forbidden(ipaddress.ip_address(address)) == kind


def test_an_api_url_must_be_https_and_public_unless_its_host_is_allowed() -> None:
    strict = EgressPolicy()
    for url in ("http://127.0.0.1:8080/api/v3", "https://127.0.0.1/api/v3", "https://10.0.0.5", "https://[::1]:8443"):
        with pytest.raises(Refused):
            strict.check(url)
    with pytest.raises(Refused, match=re.escape("localhost (at 127.0.0.1) is a loopback address")):
        strict.check("https://localhost/api/v3")  # a name is judged by what it resolves to
    with pytest.raises(Refused, match=r"http is accepted only for hosts .* GITHUB_API_ALLOWED_HOSTS"):
        strict.check("http://api.example.com/api/v3")
    with pytest.raises(Refused, match="credentials"):
        strict.check("https://user:pass@api.github.com")
    strict.check("https://api.github.com")  # a name that does not resolve now is checked at each connection

    allowed = EgressPolicy(["127.0.0.1:8080", "ghe.internal", "[::1]"])
    allowed.check("http://127.0.0.1:8080/api/v3")
    allowed.check("https://[::1]:9999/api/v3")  # a host without a port: any port
    with pytest.raises(Refused):
        allowed.check("http://127.0.0.1:8081/api/v3")  # another port of an allowed host:port
    assert allowed.allows("GHE.Internal.", 443) and allowed.allows("0:0::1", 1)
    assert allowed.curl_resolve("http://127.0.0.1:8080/octo/hello.git") is None  # allowed: nothing to pin
    with pytest.raises(ValueError, match="GITHUB_API_ALLOWED_HOSTS"):
        EgressPolicy(["[not-an-address"])


def test_git_connects_to_the_addresses_that_were_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"ghe.example.com": ["203.0.113.10", "2001:db8::10"], "rebound.example.com": ["140.82.112.6", "10.0.0.1"]}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    policy = EgressPolicy()
    # 203.0.113.0/24 and 2001:db8::/32 are documentation ranges: not public either.
    with pytest.raises(Refused, match=r"not globally routable|reserved|private"):
        policy.curl_resolve("https://ghe.example.com/octo/hello.git")
    answers["ghe.example.com"] = ["140.82.112.3", "2606:50c0::1"]
    assert policy.curl_resolve("https://ghe.example.com/octo/hello.git") == (
        "ghe.example.com:443:140.82.112.3,[2606:50c0::1]"
    )
    with pytest.raises(Refused, match=re.escape("10.0.0.1")):  # one private answer among public ones is enough
        policy.curl_resolve("https://rebound.example.com:8443/octo/hello.git")


def test_the_allowed_hosts_setting_is_a_comma_separated_list_of_host_or_host_port() -> None:
    assert load_settings(GITHUB_API_ALLOWED_HOSTS="127.0.0.1:8080, ghe.internal").github_allowed_hosts == (
        "127.0.0.1:8080",
        "ghe.internal",
    )
    assert load_settings().github_allowed_hosts == ()
    with pytest.raises(ConfigError, match="GITHUB_API_ALLOWED_HOSTS"):
        load_settings(GITHUB_API_ALLOWED_HOSTS="https://ghe.internal/api/v3")
