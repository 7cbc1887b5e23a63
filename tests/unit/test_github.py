"""GitHub Apps' secrets sealed (AES-256-GCM, a nonce each, bound to their row, rotatable), and the App JWT."""

from __future__ import annotations

import base64
import secrets

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from agentbox.config import ConfigError, load_settings
from agentbox.github.app import AppCredentials, app_jwt
from agentbox.github.crypto import DecryptError, Keyring, parse_key

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
    app = AppCredentials(id="gh-1", app_id=31337, api_url="https://api.github.com", private_key=pem.decode())
    token = app_jwt(app, now=1_800_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(
        token, key.public_key(), algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["iss"] == "31337"
    assert claims["iat"] == 1_800_000_000 - 60  # back-dated for clock skew
    assert claims["exp"] - 1_800_000_000 == 540 and claims["exp"] - claims["iat"] <= 600
    assert app.git_url == "https://github.com"
    assert AppCredentials("gh-2", 1, "https://ghe.example.com/api/v3", "").git_url == "https://ghe.example.com"
