"""The vault's rules (names, values, the cap per owner) and its sealing: what is stored does not hold the
value, opens only in its own row, and survives a key rotation. API and PostgreSQL: tests/integration/test_vault.py."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select, update

from agentbox.db.models import Secret
from agentbox.db.store import Store
from agentbox.egress.rules import SECRET_NAME, secret_names_in
from agentbox.errors import Conflict, NotFound, Unprocessable
from agentbox.github.crypto import Keyring
from agentbox.vault import TooManySecrets, UnknownSecret, Unsealable, Vault
from agentbox.vault.service import _context
from agentbox.wire.vault import MAX_PER_OWNER, MAX_VALUE_BYTES, SetSecret, name_problem, value_problem

KEY, NEW_KEY = secrets.token_bytes(32), secrets.token_bytes(32)
VALUE = "sk-live-Xq81vT0pLm"


@pytest.fixture
def vault(store: Store) -> Vault:
    return Vault(store, Keyring(KEY))


def stored(store: Store, owner: str, name: str) -> bytes:
    with store.session() as session:
        blob = session.scalar(select(Secret.value).where(Secret.owner == owner, Secret.name == name))
    assert blob is not None
    return blob


@pytest.mark.parametrize(
    "name", ["A", "_", "OPENAI_API_KEY", "token_2", "x" * 64, "_9", "openai-api-key", "A-B", "a--", "_-"]
)
def test_identifiers_and_e2bs_dashed_names_up_to_64_characters_are_names(name: str) -> None:
    assert name_problem(name) is None
    assert secret_names_in(f"Bearer ${{e2b.secrets.{name}}}") == [name]  # one rule for the vault and the proxy


@pytest.mark.parametrize(
    "name", ["", "1ABC", "-ABC", "x" * 65, "A.B", "A B", "A/B", "ÄPFEL", "A\n", "${A}", "a-/value", "--x"]
)
def test_anything_else_is_no_name(name: str) -> None:
    assert name_problem(name) is not None
    if name.strip() == name:  # (a placeholder's blanks around the name are not part of it)
        with pytest.raises(ValueError, match="is not a secret placeholder"):
            secret_names_in(f"Bearer ${{e2b.secrets.{name}}}")


def test_a_value_is_1_to_16384_bytes_of_utf8() -> None:
    assert value_problem("x") is None and value_problem("x" * MAX_VALUE_BYTES) is None
    assert value_problem("é" * (MAX_VALUE_BYTES // 2)) is None  # two bytes each: exactly the limit
    assert value_problem("") == "must not be empty"
    assert "16385 bytes" in (value_problem("x" * (MAX_VALUE_BYTES + 1)) or "")
    assert "16386 bytes" in (value_problem("é" * (MAX_VALUE_BYTES // 2 + 1)) or "")  # bytes count, not characters
    assert "surrogate" in (value_problem("a\ud800") or "")
    with pytest.raises(ValidationError) as refused:  # the body refuses it before the vault sees it
        SetSecret(value="\ud800")
    assert refused.value.errors()[0]["loc"] == ("value",)


def test_put_list_replace_delete_reveal(store: Store, vault: Vault) -> None:
    info, created = vault.put("alice", "TOKEN", VALUE)
    assert created and info.name == "TOKEN" and info.created_at == info.updated_at
    vault.put("alice", "A_FIRST", "one")
    assert [s.name for s in vault.list("alice")] == ["A_FIRST", "TOKEN"]
    assert vault.reveal("alice", "TOKEN") == VALUE
    assert VALUE.encode() not in stored(store, "alice", "TOKEN")

    replaced, created = vault.put("alice", "TOKEN", "the new one")
    assert not created and replaced.created_at == info.created_at and replaced.updated_at > info.updated_at
    assert vault.reveal("alice", "TOKEN") == "the new one"

    vault.delete("alice", "TOKEN")
    with pytest.raises(UnknownSecret) as missing:
        vault.reveal("alice", "TOKEN")
    assert isinstance(missing.value, NotFound) and "'TOKEN'" in missing.value.detail
    assert "agentbox secrets set TOKEN" in missing.value.detail
    with pytest.raises(UnknownSecret):
        vault.delete("alice", "TOKEN")


def test_a_placeholder_finds_a_name_e2b_stored_lower_cased_and_an_exact_name_first(vault: Vault) -> None:
    vault.put("alice", "openai_key", "lower")  # E2B's Secret.create("OPENAI_KEY") stores it so
    assert vault.reveal("alice", "OPENAI_KEY") == vault.reveal("alice", "openai_key") == "lower"
    vault.put("alice", "OPENAI_KEY", "exact")
    assert vault.reveal("alice", "OPENAI_KEY") == "exact" and vault.reveal("alice", "openai_key") == "lower"
    with pytest.raises(UnknownSecret):
        vault.reveal("alice", "Other_Key")


def test_an_owner_reaches_only_their_own(vault: Vault) -> None:
    vault.put("alice", "TOKEN", VALUE)
    assert vault.list("bob") == []
    with pytest.raises(UnknownSecret):
        vault.reveal("bob", "TOKEN")
    with pytest.raises(UnknownSecret):
        vault.delete("bob", "TOKEN")
    _, created = vault.put("bob", "TOKEN", "bob's own")
    assert created  # bob's secret of that name, beside alice's
    assert vault.reveal("alice", "TOKEN") == VALUE and vault.reveal("bob", "TOKEN") == "bob's own"


def test_bad_names_and_values_are_refused_naming_which(vault: Vault) -> None:
    for call in (
        lambda: vault.put("alice", "1BAD", VALUE),
        lambda: vault.reveal("alice", "-AB"),
        lambda: vault.delete("alice", "x" * 65),
    ):
        with pytest.raises(Unprocessable, match=r"^name "):
            call()
    for value in ("", "x" * (MAX_VALUE_BYTES + 1)):
        with pytest.raises(Unprocessable, match=r"^value: "):
            vault.put("alice", "TOKEN", value)
    assert vault.list("alice") == []


def test_an_owner_holds_at_most_100_and_deleting_one_frees_a_place(vault: Vault) -> None:
    for i in range(MAX_PER_OWNER):
        vault.put("alice", f"S{i}", "v")
    with pytest.raises(TooManySecrets) as refused:
        vault.put("alice", "ONE_MORE", "v")
    assert isinstance(refused.value, Conflict)
    assert "100 secrets" in refused.value.detail and "agentbox secrets rm" in refused.value.detail
    vault.put("alice", "S0", "replaced")  # replacing takes no new place
    vault.put("bob", "ONE_MORE", "v")  # the cap is per owner
    vault.delete("alice", "S1")
    assert vault.put("alice", "ONE_MORE", "v")[1]
    assert len(vault.list("alice")) == MAX_PER_OWNER


def test_a_sealed_value_opens_only_in_its_own_row(store: Store, vault: Vault) -> None:
    vault.put("alice", "TOKEN", VALUE)
    vault.put("bob", "TOKEN", "bob's")
    vault.put("alice", "OTHER", "other")
    alice_token = stored(store, "alice", "TOKEN")
    with store.session() as session:  # an attacker with the database copies alice's value into bob's row
        session.execute(update(Secret).where(Secret.owner == "bob").values(value=alice_token))
        session.execute(update(Secret).where(Secret.name == "OTHER").values(value=alice_token))
    for owner, name in (("bob", "TOKEN"), ("alice", "OTHER")):
        with pytest.raises(Unsealable) as refused:
            vault.reveal(owner, name)
        assert refused.value.status_code == 503 and VALUE not in refused.value.detail
    assert vault.reveal("alice", "TOKEN") == VALUE


def test_dashes_keep_each_rows_sealing_context_its_own(store: Store, vault: Vault) -> None:
    # "-" may sit where an owner ends and a name begins: the rows below must still seal apart.
    pairs = [("alice-x", "y"), ("alice", "x-y"), ("alice", "x_y"), ("alice-x-y", "value")]
    for owner, name in pairs:
        vault.put(owner, name, f"{owner}:{name}")
    blobs = {pair: stored(store, *pair) for pair in pairs}
    for target in pairs:
        for source in pairs:
            if source == target:
                continue
            with store.session() as session:
                session.execute(
                    update(Secret)
                    .where(Secret.owner == target[0], Secret.name == target[1])
                    .values(value=blobs[source])
                )
            with pytest.raises(Unsealable):
                vault.reveal(*target)
    with store.session() as session:
        for (owner, name), blob in blobs.items():
            session.execute(update(Secret).where(Secret.owner == owner, Secret.name == name).values(value=blob))
    assert [vault.reveal(*pair) for pair in pairs] == [f"{o}:{n}" for o, n in pairs]


_NAMES = st.from_regex(SECRET_NAME, fullmatch=True).filter(lambda name: name_problem(name) is None)


@given(
    st.tuples(st.text(min_size=1, max_size=12), _NAMES),
    st.tuples(st.text(min_size=1, max_size=12), _NAMES),
)
def test_no_two_rows_share_a_sealing_context(first: tuple[str, str], second: tuple[str, str]) -> None:
    assert (_context(*first) == _context(*second)) == (first == second)


def test_a_rotation_reseals_under_the_new_key(store: Store, vault: Vault) -> None:
    vault.put("alice", "TOKEN", VALUE)
    vault.put("bob", "TOKEN", "bob's")
    with pytest.raises(Unsealable, match="GITHUB_APP_ENCRYPTION_OLD_KEY"):
        Vault(store, Keyring(NEW_KEY)).reveal("alice", "TOKEN")
    with pytest.raises(Unsealable, match="nothing was changed"):
        Vault(store, Keyring(NEW_KEY)).rotate()
    assert Vault(store, Keyring(NEW_KEY, KEY)).rotate() == (2, 2)
    assert Vault(store, Keyring(NEW_KEY, KEY)).rotate() == (0, 2)  # done already
    rotated = Vault(store, Keyring(NEW_KEY))
    assert rotated.reveal("alice", "TOKEN") == VALUE and rotated.reveal("bob", "TOKEN") == "bob's"
