"""E2B's Secrets API on agentbox's E2B endpoint, through the unmodified `e2b` SDK: a secret it makes is the
owner's vault secret (named by /api/v1/secrets, usable in a header rule's `${e2b.secrets.NAME}`), its
versions rise with each value, its metadata is bounded, another owner's key finds nothing, bad input is
refused with what to fix, and no answer carries a value."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from e2b import Secret, SecretException, SecretNotFoundException

from agentbox.client import Client
from agentbox.config import load_settings
from agentbox.db.store import Store
from agentbox.egress.rules import fill, secret_names_in
from agentbox.github.crypto import Keyring, parse_key
from agentbox.vault import Vault

from .conftest import KEYS, Server

VALUE = "sk-e2b-" + secrets.token_hex(12)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def made(sdk: str) -> Iterator[list[str]]:
    """Names of secrets a test made through the SDK, destroyed after it (the session's server is shared)."""
    names: list[str] = []
    yield names
    for name in names:
        Secret.destroy(name)


def test_create_get_update_and_destroy_through_the_sdk(sdk: str, made: list[str], alice: Client) -> None:
    asked = unique("E2B_Key")  # E2B lower-cases a new name; the answer gives the canonical one
    created = Secret.create(asked, VALUE, metadata={"env": "test"})
    made.append(created.name)
    assert created.name == asked.lower() and created.secret_id.startswith("sec_")
    assert (created.version, created.metadata) == (1, {"env": "test"})
    assert created.created_at == created.updated_at and created.created_at.tzinfo is not None

    assert Secret.get_info(created.secret_id) == created
    assert Secret.get_info(created.name) == created
    assert Secret.get_info(asked) == created  # the name as first given finds it too
    assert Secret.exists(created.name) and Secret.exists(created.secret_id)

    second = Secret.update(created.secret_id, VALUE + "-2")
    assert (second.secret_id, second.version, second.metadata) == (created.secret_id, 2, {"env": "test"})
    assert second.updated_at > created.updated_at and second.created_at == created.created_at
    third = Secret.update(created.name, VALUE + "-3", metadata={"env": "prod", "team": "ml"})
    assert (third.version, third.metadata) == (3, {"env": "prod", "team": "ml"})

    # The same secret in agentbox's own API (what a header rule's ${e2b.secrets.NAME} names), and a value
    # set there is the E2B secret's next version.
    assert created.name in [s.name for s in alice.secrets()]
    alice.put_secret(created.name, VALUE + "-4")
    assert Secret.get_info(created.name).version == 4

    # No answer carries a value, not even in fields the SDK does not read.
    with httpx.Client(base_url=f"{sdk}/e2b", headers={"X-API-Key": KEYS["alice"]}, timeout=30) as raw:
        for path in ("/secrets", f"/secrets/{created.secret_id}"):
            answer = raw.get(path)
            assert answer.status_code == 200 and created.secret_id in answer.text and VALUE not in answer.text

    assert Secret.destroy(created.secret_id) is True
    made.remove(created.name)
    assert not Secret.exists(created.secret_id) and not Secret.exists(created.name)
    assert Secret.destroy(created.name) is False
    with pytest.raises(SecretNotFoundException):
        Secret.get_info(created.secret_id)
    with pytest.raises(SecretNotFoundException):
        Secret.update(created.name, VALUE)
    assert created.name not in [s.name for s in alice.secrets()]


def test_the_list_is_paged_by_the_sdk_s_paginator(sdk: str, made: list[str]) -> None:
    mine = sorted(Secret.create(unique(f"page-{i}"), VALUE).name for i in range(3))
    made.extend(mine)
    paginator = Secret.list(limit=2)
    pages = []
    while paginator.has_next:
        pages.append(paginator.next_items())
    listed = [info.name for page in pages for info in page]
    assert len(pages) >= 2 and all(1 <= len(page) <= 2 for page in pages), pages
    assert listed == sorted(set(listed)) and set(mine) <= set(listed)  # A-Z, none twice, none left out
    assert paginator.next_token is None
    # A page picks up after a token given by hand, as E2B's `next_token` argument does.
    resumed = [info.name for info in Secret.list(limit=100, next_token=mine[0]).next_items()]
    assert set(mine[1:]) <= set(resumed) and all(name > mine[0] for name in resumed), resumed


def test_another_owner_s_key_finds_nothing(sdk: str, made: list[str]) -> None:
    created = Secret.create(unique("alice-only"), VALUE)
    made.append(created.name)
    bob = KEYS["bob"]
    for selector in (created.secret_id, created.name):
        with pytest.raises(SecretNotFoundException):
            Secret.get_info(selector, api_key=bob)
        assert Secret.exists(selector, api_key=bob) is False
        with pytest.raises(SecretNotFoundException):
            Secret.update(selector, "taken", api_key=bob)
        assert Secret.destroy(selector, api_key=bob) is False
    assert created.name not in [info.name for info in Secret.list(api_key=bob).next_items()]
    assert Secret.get_info(created.secret_id).version == 1  # untouched


@pytest.mark.parametrize(
    ("name", "value", "metadata", "said"),
    [
        ("", VALUE, None, "name '': must be a letter or _"),
        ("1st-key", VALUE, None, "name '1st-key': must be a letter or _"),
        ("k" * 65, VALUE, None, "at most 64"),
        ("sec_mine", VALUE, None, "the sec_ prefix is kept for secrets' identifiers"),
        ("fine-name", "", None, "value: must not be empty"),
        ("fine-name", "x" * 16385, None, "value: String should have at most 16384 characters"),
        ("fine-name", "é" * 9000, None, "value: is 18000 bytes of UTF-8; the limit is 16384"),
        ("fine-name", VALUE, {f"k{i}": "v" for i in range(33)}, "metadata: has 33 entries; the limit is 32"),
        ("fine-name", VALUE, {"k" * 129: "v"}, "is 129 bytes of UTF-8; the limit is 128"),
        ("fine-name", VALUE, {"note": "v" * 1025}, "the value of 'note' is 1025 bytes of UTF-8; the limit is 1024"),
        ("fine-name", VALUE, {f"k{i}": "v" * 1000 for i in range(9)}, "bytes of UTF-8 in all (keys and values)"),
    ],
)
def test_bad_input_is_refused_saying_what_to_fix(
    sdk: str, name: str, value: str, metadata: dict[str, str] | None, said: str
) -> None:
    with pytest.raises(SecretException) as refused:
        Secret.create(name, value, metadata=metadata)
    assert str(refused.value).startswith("400: ") and said in str(refused.value), refused.value
    assert not Secret.exists("fine-name")


def test_a_name_held_already_is_a_409_and_bad_updates_change_nothing(sdk: str, made: list[str]) -> None:
    created = Secret.create(unique("held"), VALUE, metadata={"a": "b"})
    made.append(created.name)
    with pytest.raises(SecretException, match=f"409: you have a secret named '{created.name}' already"):
        Secret.create(created.name.upper(), VALUE)
    with pytest.raises(SecretException, match="400: value: must not be empty"):
        Secret.update(created.secret_id, "")
    with pytest.raises(SecretException, match="400: metadata: has 40 entries"):
        Secret.update(created.secret_id, VALUE, metadata={str(i): "" for i in range(40)})
    assert Secret.get_info(created.secret_id) == created


def test_a_secret_made_by_the_sdk_is_what_a_header_rule_fills_in(sdk: str, made: list[str], server: Server) -> None:
    # What the egress proxy does with a header rule (egress/rules.py: the names a value holds, the vault's
    # values for them, filled in), on the server's own database with its key.
    info = Secret.create(unique("Rule-Token"), VALUE)
    made.append(info.name)
    Secret.update(info.secret_id, VALUE + "-new")
    header = "Bearer " + Secret.fill(info.name)
    settings = load_settings(WORKSPACE_DATA_DIR=str(server.data_dir))
    store = Store(settings.sqlalchemy_url)
    try:
        vault = Vault(store, Keyring(parse_key(server.env["GITHUB_APP_ENCRYPTION_KEY"])))
        names = secret_names_in(header)
        assert names == [info.name]
        assert fill(header, {name: vault.reveal("alice", name) for name in names}) == f"Bearer {VALUE}-new"
    finally:
        store.close()
