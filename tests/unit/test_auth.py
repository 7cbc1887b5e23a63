"""Who gets in, below HTTP: key records, the tokens made from them, and the rate limits."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from agentbox.auth import keys as keys_module
from agentbox.auth.keys import ApiKeys, digest_of
from agentbox.auth.limits import Throttle
from agentbox.auth.tokens import SECRET_FILE, Tokens, server_secret
from agentbox.db.store import Store
from agentbox.errors import BadRequest, NotFound
from agentbox.wire.domain import Quota

ENV_KEYS = {"alice-key-0123456789abcdef": "alice", "bob-key-0123456789abcdef00": "bob"}


@pytest.fixture
def keys(store: Store) -> ApiKeys:
    keys = ApiKeys(store)
    keys.sync_from_settings(ENV_KEYS, {"alice"})
    return keys


def test_keys_of_the_environment_become_records_that_follow_it(keys: ApiKeys) -> None:
    alice = keys.authenticate("alice-key-0123456789abcdef")
    bob = keys.authenticate("bob-key-0123456789abcdef00")
    assert alice is not None and alice.owner == "alice" and alice.admin
    assert bob is not None and bob.owner == "bob" and not bob.admin
    assert keys.authenticate("alice-key-0123456789abcdeX") is None and keys.authenticate("") is None
    stored = {record.digest for record in keys.find()}
    assert stored == {digest_of(secret) for secret in ENV_KEYS}  # hashes only
    # Taken out of the variable (bob's), or made an admin (bob, by WORKSPACE_ADMINS): followed at the next start.
    keys.sync_from_settings({"alice-key-0123456789abcdef": "alice"}, {"alice"})
    assert keys.authenticate("bob-key-0123456789abcdef00") is None
    assert [record.owner for record in keys.find()] == ["alice"]
    keys.sync_from_settings(ENV_KEYS, {"alice", "bob"})  # back in the variable: it stays revoked
    assert keys.authenticate("bob-key-0123456789abcdef00") is None
    assert keys.active(alice.key_id) == alice  # same record, same id, across starts


def test_made_keys_show_their_secret_once_and_revoke_everywhere_within_the_cache_time(
    store: Store, keys: ApiKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, secret = keys.create("carol", "ci", quota=Quota(max_workspaces=2, max_memory=1 << 30))
    caller = keys.authenticate(secret)
    assert caller is not None and caller.quota == Quota(2, None, 1 << 30) and caller.key_id == record.id
    assert secret not in {r.digest for r in keys.find()} and record.digest == digest_of(secret)
    other_server = ApiKeys(store)  # a replica: its own cache, the same database
    assert other_server.authenticate(secret) == caller
    keys.revoke(record.id)
    assert keys.authenticate(secret) is None  # this server: at once
    assert other_server.authenticate(secret) == caller  # the replica: from its cache, for a moment...
    monkeypatch.setattr(keys_module, "CACHE_SECONDS", 0.0)
    assert other_server.authenticate(secret) is None  # ...and no longer once it looks again
    assert keys.revoked_among([record.id, caller.key_id, "key-unknown"]) == {record.id, "key-unknown"}
    with pytest.raises(NotFound):
        keys.revoke("key-0000000000000000")


def test_the_last_admin_key_cannot_be_revoked(keys: ApiKeys) -> None:
    alice = keys.authenticate("alice-key-0123456789abcdef")
    assert alice is not None
    with pytest.raises(BadRequest, match="last admin"):
        keys.revoke(alice.key_id)
    keys.create("root", "second admin", admin=True)
    assert keys.revoke(alice.key_id).revoked_at is not None


def test_a_flood_of_made_up_keys_is_not_cached(keys: ApiKeys) -> None:
    for i in range(100):
        assert keys.authenticate(f"guess-{i}") is None
    assert keys.peek("guess-1") == (False, None)


def test_tokens_are_signed_by_the_server_for_one_use_while_their_key_works(keys: ApiKeys, tmp_path: Path) -> None:
    tokens = Tokens(server_secret("", tmp_path), keys)
    alice = keys.authenticate("alice-key-0123456789abcdef")
    assert alice is not None
    token, expires = tokens.mint(alice, "preview", 60, ws="ws-1", port=8080)
    assert tokens.check(token, "preview", ws="ws-1", port=8080) == alice
    assert tokens.check(token, "terminal", ws="ws-1", port=8080) is None  # another purpose
    assert tokens.check(token, "preview", ws="ws-2", port=8080) is None  # another workspace
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["kid"] == alice.key_id and claims["use"] == "preview" and claims["exp"] == expires
    for secret in ENV_KEYS:  # nothing of the API key: no guessing material for it
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, secret, algorithms=["HS256"])
    forged = jwt.encode({**claims, "sub": "bob"}, "not-the-secret-0123456789abcdef0123", algorithm="HS256")
    assert tokens.check(forged, "preview", ws="ws-1", port=8080) is None
    expired, _ = tokens.mint(alice, "preview", -1, ws="ws-1", port=8080)
    assert tokens.check(expired, "preview", ws="ws-1", port=8080) is None

    bound = tokens.bound(alice, "envd", "ws-1")
    assert tokens.check_bound(bound, "envd", "ws-1", "alice") == alice
    assert tokens.check_bound(bound, "envd", "ws-2", "alice") is None
    assert tokens.check_bound(bound, "traffic", "ws-1", "alice") is None
    assert tokens.check_bound(bound, "envd", "ws-1", "bob") is None  # not the workspace owner's key
    assert bound in tokens.bound_of("alice", "envd", "ws-1")
    keys.create("root", "another admin", admin=True)
    keys.revoke(alice.key_id)
    assert tokens.check(token, "preview", ws="ws-1", port=8080) is None
    assert tokens.check_bound(bound, "envd", "ws-1", "alice") is None


def test_the_server_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = server_secret("", tmp_path)
    assert server_secret("", tmp_path) == first and len(first) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / SECRET_FILE).st_mode) == 0o600
    assert server_secret("given-by-a-setting-0123456789abcdef", tmp_path) == b"given-by-a-setting-0123456789abcdef"
    (tmp_path / SECRET_FILE).write_text("short")
    with pytest.raises(ValueError, match="delete it"):
        server_secret("", tmp_path)


def test_failures_block_an_address_and_anonymous_calls_are_counted() -> None:
    throttle = Throttle("3/minute", "2/second")
    for _ in range(3):
        assert throttle.blocked("192.0.2.1") is None
        throttle.failure("192.0.2.1")
    wait = throttle.blocked("192.0.2.1")
    assert wait is not None and 1 <= wait <= 60
    assert throttle.blocked("192.0.2.2") is None  # another address
    assert [throttle.anonymous("192.0.2.3") for _ in range(3)][:2] == [None, None]
    assert throttle.anonymous("192.0.2.3") is not None
    time.sleep(1.1)
    assert throttle.anonymous("192.0.2.3") is None
