"""Secrets over the API, on a real server with a real PostgreSQL: stored sealed, answered by name only,
one owner's out of another's reach (an admin's too), bad input refused by field, at most 100 each, and
the CLI. What the egress proxy gets is `Vault.reveal`, called here on the same database.

The server runs with workspaces disabled: none of this needs a sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from agentbox.client import APIError
from agentbox.db.models import Secret
from agentbox.db.store import Store
from agentbox.github.crypto import Keyring, parse_key
from agentbox.vault import UnknownSecret, Vault
from agentbox.wire.vault import MAX_PER_OWNER, MAX_VALUE_BYTES

from .conftest import KEYS, Server

KEY = "5f" * 32
VALUE = "sk-live-Qz81xTvB27pLmN"
#: A small request limit, so that a body over it is cheap to send.
MAX_REQUEST = 65536


@pytest.fixture
def served(tmp_path: Path, postgres_url: str) -> Iterator[Server]:
    env = {
        "ENABLE_AGENT_WORKSPACES": "false",
        "WORKSPACE_DATABASE_URL": postgres_url,
        "GITHUB_APP_ENCRYPTION_KEY": KEY,
        "WORKSPACE_MAX_REQUEST": str(MAX_REQUEST),
    }
    server = Server(tmp_path, env=env).start()
    yield server
    server.stop()


@pytest.fixture
def vault(served: Server, postgres_url: str) -> Iterator[Vault]:
    """The vault as the egress proxy holds it: on the server's database, with the server's key."""
    store = Store(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    yield Vault(store, Keyring(parse_key(KEY)))
    store.close()


def api(server: Server, owner: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[owner]}"} if owner else {}
    return httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30)


def test_a_secret_is_stored_sealed_answered_by_name_and_replaced(served: Server, vault: Vault) -> None:
    with api(served, "alice") as alice:
        made = alice.put("/secrets/MODEL_TOKEN", json={"value": VALUE})
        assert made.status_code == 201 and set(made.json()) == {"name", "created_at", "updated_at"}
        assert made.json()["name"] == "MODEL_TOKEN" and VALUE not in made.text
        listed = alice.get("/secrets")
        assert listed.status_code == 200 and [s["name"] for s in listed.json()["secrets"]] == ["MODEL_TOKEN"]
        assert VALUE not in listed.text
        with vault.store.session() as session:
            column = session.scalar(select(Secret.value).where(Secret.name == "MODEL_TOKEN"))
        assert column is not None and VALUE.encode() not in column
        assert vault.reveal("alice", "MODEL_TOKEN") == VALUE

        replaced = alice.put("/secrets/MODEL_TOKEN", json={"value": "the-rotated-token"})
        assert replaced.status_code == 200 and "the-rotated-token" not in replaced.text
        assert replaced.json()["created_at"] == made.json()["created_at"]
        assert replaced.json()["updated_at"] > made.json()["updated_at"]
        assert vault.reveal("alice", "MODEL_TOKEN") == "the-rotated-token"
    assert VALUE not in served.log() and "the-rotated-token" not in served.log()


def test_another_owner_can_neither_see_nor_change_a_secret_and_no_key_gets_nothing(
    served: Server, vault: Vault
) -> None:
    with api(served, "alice") as alice, api(served, "bob") as bob, api(served, None) as nobody:
        assert alice.put("/secrets/SHARED_NAME", json={"value": VALUE}).status_code == 201
        assert bob.put("/secrets/BOBS", json={"value": "bob-value"}).status_code == 201

        assert [s["name"] for s in bob.get("/secrets").json()["secrets"]] == ["BOBS"]
        refused = bob.delete("/secrets/SHARED_NAME")
        assert refused.status_code == 404 and "SHARED_NAME" in refused.json()["detail"]
        with pytest.raises(UnknownSecret):
            vault.reveal("bob", "SHARED_NAME")
        # bob's PUT of the name makes bob's own secret; alice's is untouched.
        assert bob.put("/secrets/SHARED_NAME", json={"value": "bob-overwrite"}).status_code == 201
        assert vault.reveal("alice", "SHARED_NAME") == VALUE
        assert vault.reveal("bob", "SHARED_NAME") == "bob-overwrite"

        # alice's key is an admin's (the first of WORKSPACE_API_KEYS): still only her own secrets.
        assert [s["name"] for s in alice.get("/secrets").json()["secrets"]] == ["SHARED_NAME"]
        assert alice.delete("/secrets/BOBS").status_code == 404
        assert vault.reveal("bob", "BOBS") == "bob-value"

        for answer in (
            nobody.get("/secrets"),
            nobody.put("/secrets/SHARED_NAME", json={"value": "anonymous"}),
            nobody.delete("/secrets/SHARED_NAME"),
        ):
            assert answer.status_code == 401 and answer.json()["detail"]
        assert vault.reveal("alice", "SHARED_NAME") == VALUE


def test_bad_names_and_values_get_a_422_naming_the_field_and_large_bodies_a_413(served: Server) -> None:
    too_large = "y" * (MAX_VALUE_BYTES + 1)
    with api(served, "alice") as alice:
        for path, body, where in (
            ("/secrets/1STARTS_WITH_A_DIGIT", {"value": VALUE}, ["path", "name"]),
            ("/secrets/" + "N" * 65, {"value": VALUE}, ["path", "name"]),
            ("/secrets/-STARTS_WITH_A_DASH", {"value": VALUE}, ["path", "name"]),
            ("/secrets/HAS.A.DOT", {"value": VALUE}, ["path", "name"]),
            ("/secrets/EMPTY", {"value": ""}, ["body", "value"]),
            ("/secrets/TOO_LARGE", {"value": too_large}, ["body", "value"]),
            # Two bytes of UTF-8 each: under the limit in characters, over it in bytes.
            ("/secrets/TOO_LARGE", {"value": "é" * (MAX_VALUE_BYTES // 2 + 1)}, ["body", "value"]),
            ("/secrets/NO_VALUE", {}, ["body", "value"]),
            ("/secrets/EXTRA", {"value": VALUE, "owner": "bob"}, ["body", "owner"]),
        ):
            answer = alice.put(path, json=body)
            assert answer.status_code == 422, (path, answer.text)
            assert [error["loc"] for error in answer.json()["detail"]] == [where], answer.text
            assert VALUE not in answer.text and too_large not in answer.text
        # A lone surrogate is valid JSON but no text UTF-8 can carry.
        surrogate = alice.put(
            "/secrets/SURROGATE", content=b'{"value": "\\ud800"}', headers={"Content-Type": "application/json"}
        )
        assert surrogate.status_code == 422 and surrogate.json()["detail"][0]["loc"] == ["body", "value"]
        assert alice.delete("/secrets/HAS.A.DOT").json()["detail"][0]["loc"] == ["path", "name"]
        # E2B's way of naming them is a name too.
        assert alice.put("/secrets/openai-api-key", json={"value": VALUE}).status_code == 201
        assert alice.delete("/secrets/openai-api-key").status_code == 204

        # The server's request limit holds for this PUT too (only uploads of files have their own).
        huge = json.dumps({"value": "z" * MAX_REQUEST}).encode()
        assert alice.put("/secrets/HUGE", content=huge, headers={"Content-Type": "application/json"}).status_code == 413
        chunked = alice.put("/secrets/HUGE", content=iter([huge]), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413 and "WORKSPACE_MAX_REQUEST" in chunked.json()["detail"]
        assert alice.get("/secrets").json()["secrets"] == []


def test_the_101st_secret_is_refused_until_one_is_deleted(served: Server, vault: Vault) -> None:
    with served.client("alice") as alice:
        for i in range(MAX_PER_OWNER):
            alice.put_secret(f"S{i:03}", f"value-{i}")
        with pytest.raises(APIError) as refused:
            alice.put_secret("ONE_MORE", VALUE)
        assert refused.value.status_code == 409
        assert f"{MAX_PER_OWNER} secrets" in refused.value.message and "DELETE /api/v1/secrets" in refused.value.message
        alice.put_secret("S000", "replaced")  # a replacement takes no new place
        assert vault.reveal("alice", "S000") == "replaced"

        alice.delete_secret("S001")
        with pytest.raises(UnknownSecret, match="'S001'"):
            vault.reveal("alice", "S001")
        with pytest.raises(APIError) as gone:
            alice.delete_secret("S001")
        assert gone.value.status_code == 404
        alice.put_secret("ONE_MORE", VALUE)
        names = [s.name for s in alice.secrets()]
        assert len(names) == MAX_PER_OWNER and "ONE_MORE" in names and "S001" not in names


def agentbox(
    server: Server, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTBOX_URL": server.url, "AGENTBOX_API_KEY": KEYS["alice"]}
    result = subprocess.run(
        [sys.executable, "-m", "agentbox.cli", *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_the_cli_sets_from_stdin_or_a_file_lists_and_removes(served: Server, vault: Vault, tmp_path: Path) -> None:
    assert "set secret CLI_TOKEN" in agentbox(served, "secrets", "set", "CLI_TOKEN", stdin=VALUE + "\n").stdout
    assert vault.reveal("alice", "CLI_TOKEN") == VALUE  # the line break `echo` adds is no part of it
    value_file = tmp_path / "token.txt"
    value_file.write_text("from-a-file\n")
    assert "replaced" in agentbox(served, "secrets", "set", "CLI_TOKEN", "--value-file", str(value_file)).stdout
    assert vault.reveal("alice", "CLI_TOKEN") == "from-a-file"

    listed = agentbox(served, "secrets", "ls")
    assert "CLI_TOKEN" in listed.stdout and "from-a-file" not in listed.stdout
    assert agentbox(served, "secrets", "ls", "-q").stdout.split() == ["CLI_TOKEN"]

    for args, stdin, named in (
        (("set", "1BAD"), VALUE, "NAME"),
        (("set", "EMPTY"), "\n", "stdin"),
        (("set", "MISSING", "--value-file", str(tmp_path / "nothing-here")), None, "--value-file"),
        (("set", "LARGE"), "x" * (MAX_VALUE_BYTES + 1), "stdin"),
        (("rm", "A.B"), None, "NAME"),
    ):
        bad = agentbox(served, "secrets", *args, stdin=stdin, check=False)
        assert bad.returncode == 2 and named in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)

    assert "deleted secret CLI_TOKEN" in agentbox(served, "secrets", "rm", "CLI_TOKEN").stdout
    missing = agentbox(served, "secrets", "rm", "CLI_TOKEN", check=False)
    assert missing.returncode == 1 and "CLI_TOKEN" in missing.stderr and "HTTP 404" in missing.stderr
    assert agentbox(served, "secrets", "ls", "-q").stdout.split() == []
