"""GitHub Apps: secrets sealed at rest, tokens minted as GitHub does, repositories in and out of
gVisor workspaces, and no token or key left anywhere (against the local stand-in for GitHub)."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentbox.client import APIError, Client
from agentbox.wire.github import PushOut

from .conftest import KEYS, Server, eventually
from .github_standin import GitHubStandIn, new_private_key

KEY, NEW_KEY = secrets.token_hex(32), secrets.token_hex(32)
REPOSITORY = "octo/hello"
README = "# hello\nfrom the stand-in\n"
# The stand-in listens on loopback, which the server reaches for a GitHub App only when told to.
ALLOWED = {"GITHUB_API_ALLOWED_HOSTS": "127.0.0.1"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubStandIn]:
    github = GitHubStandIn(app_id=31337, private_key=new_private_key(), root=tmp_path_factory.mktemp("github"))
    github.add_repository(REPOSITORY, {"README.md": README})
    github.start()
    yield github
    github.stop()


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("gh"), env={"GITHUB_APP_ENCRYPTION_KEY": KEY, **ALLOWED}).start()
    yield server
    server.stop()


def register(client: Client, standin: GitHubStandIn, private_key: str | None = None) -> str:
    body = {"app_id": standin.app_id, "private_key": private_key or standin.private_key, "api_url": standin.api_url}
    answer = client._call("POST", "/github/apps", json={**body, "webhook_secret": "hook-secret-Qx7"}).json()
    return str(answer["id"])


def database(server: Server) -> Path:
    return server.data_dir / "agentbox.db"


def sealed_key(server: Server, app: str) -> bytes:
    with sqlite3.connect(database(server)) as db:
        return bytes(db.execute("SELECT private_key FROM github_apps WHERE id = ?", (app,)).fetchone()[0])


def test_apps_are_stored_sealed_and_never_shown(gh: Server, standin: GitHubStandIn) -> None:
    with gh.client() as alice, gh.client("bob") as bob:
        app = register(alice, standin)
        shown = alice._call("GET", f"/github/apps/{app}").json()
        assert shown == {
            "id": app,
            "app_id": standin.app_id,
            "api_url": standin.api_url,
            "git_url": standin.api_url.removesuffix("/api/v3"),  # not given: where the API is, as on a GHES
            "has_webhook_secret": True,
            "created_at": shown["created_at"],
        }
        assert [a["id"] for a in alice._call("GET", "/github/apps").json()["apps"]] == [app]
        # Another owner sees nothing of it.
        with pytest.raises(APIError) as hidden:
            bob._call("GET", f"/github/apps/{app}")
        assert hidden.value.status_code == 404 and bob._call("GET", "/github/apps").json()["apps"] == []
        # At rest: ciphertext, neither the key nor the webhook secret.
        raw = database(gh).read_bytes()
        assert b"PRIVATE KEY" not in raw and b"hook-secret-Qx7" not in raw
        assert len(sealed_key(gh, app)) > len(standin.private_key)
        alice._call("DELETE", f"/github/apps/{app}")
        with pytest.raises(APIError) as gone:
            alice._call("GET", f"/github/apps/{app}")
        assert gone.value.status_code == 404


def test_bad_registrations_are_refused_without_repeating_the_key(gh: Server) -> None:
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    not_a_key = "-----BEGIN RSA PRIVATE KEY-----\nnot-really-a-key-Zr81\n-----END RSA PRIVATE KEY-----\n"
    real_key = new_private_key()
    for body, says in [
        ({"app_id": 1, "private_key": not_a_key}, "not a PEM private key"),
        ({"app_id": 0, "private_key": real_key}, "greater than 0"),
        ({"app_id": 1, "private_key": real_key, "api_url": "ftp://x"}, "http(s) URL"),
    ]:
        response = httpx.post(f"{gh.url}/api/v1/github/apps", json=body, headers=headers)
        assert response.status_code == 422 and says in response.text, response.text
        assert "not-really-a-key-Zr81" not in response.text and real_key.splitlines()[1] not in response.text


def test_a_repository_is_cloned_into_a_gvisor_workspace_and_a_branch_pushed_back_leaving_no_secret(
    gh: Server, standin: GitHubStandIn
) -> None:
    with gh.client() as alice:
        app = register(alice, standin)
        workspace = alice.create(repo={"repository": REPOSITORY, "app": app})
        workspace_id = workspace.id
        try:
            assert (
                workspace.runtime == "runsc"
                and workspace.repo is not None
                and workspace.repo.path == "/workspace/hello"
            )
            assert standin.verified_jwts >= 1 and len(standin.minted) >= 1  # a JWT GitHub would accept
            assert standin.minted[-1].repositories == ("hello",)  # scoped to that repository
            assert alice.exec(workspace_id, "cat /workspace/hello/README.md").stdout == README
            # Another checkout of the same repository within the hour reuses the cached token.
            minted = len(standin.minted)
            alice.delete(alice.create(repo={"repository": REPOSITORY, "app": app}).id)
            assert len(standin.minted) == minted
            change = (
                "cd /workspace/hello && git checkout -q -b agent/change && echo 'by the agent' > CHANGE.md && "
                "git add CHANGE.md && git -c user.name=agent -c user.email=agent@example.com commit -q -m change && "
                "git rev-parse HEAD"
            )
            made = alice.exec(workspace_id, change)
            assert made.exit_code == 0, made
            minted_before = len(standin.minted)
            pushed = alice.git_push(workspace_id)
            assert pushed == PushOut(repository=REPOSITORY, branch="agent/change", commit=made.stdout.strip())
            assert standin.branch(REPOSITORY, "agent/change") == pushed.commit  # it is on "GitHub"
            assert len(standin.minted) == minted_before + 1  # with a freshly minted token

            # No token or key anywhere: the workspace's files and environment, the database, the log.
            secrets_ = [m.token for m in standin.minted] + [standin.private_key.splitlines()[1]]
            environment = alice.exec(workspace_id, "env; tr '\\0' '\\n' </proc/1/environ").stdout
            assert "HOME=/home/agent" in environment
            assert all(secret not in environment for secret in secrets_)
            alice.write_file(workspace_id, "/tmp/needles", "\n".join(secrets_).encode())
            found = alice.exec(
                workspace_id,
                "grep -rl -F -f /tmp/needles / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; rm /tmp/needles",
                timeout=300,
            ).stdout
            assert found.split() == ["/tmp/needles"], found  # the search's own list, nothing else
            config = alice.exec(workspace_id, "cat /workspace/hello/.git/config").stdout
            assert "url = " in config and "x-access-token" not in config and "extraheader" not in config.lower()
            stored = database(gh).read_bytes()
            logged = gh.log()
            for secret in secrets_:
                assert secret.encode() not in stored and secret not in logged
        finally:
            alice.delete(workspace_id)


def test_swapped_ciphertexts_do_not_decrypt(gh: Server, standin: GitHubStandIn) -> None:
    with gh.client() as alice:
        first, second = register(alice, standin), register(alice, standin)
        with sqlite3.connect(database(gh)) as db:
            a, b = sealed_key(gh, first), sealed_key(gh, second)
            db.execute("UPDATE github_apps SET private_key = ? WHERE id = ?", (b, first))
            db.execute("UPDATE github_apps SET private_key = ? WHERE id = ?", (a, second))
        before = len(standin.minted)
        with pytest.raises(APIError) as refused:
            alice.create(repo={"repository": REPOSITORY, "app": first})
        assert refused.value.status_code == 503 and "cannot be decrypted" in refused.value.detail
        assert len(standin.minted) == before and alice.list() == []  # nothing minted, no workspace left
        for app in (first, second):
            alice._call("DELETE", f"/github/apps/{app}")


def test_a_key_github_does_not_know_gets_a_clear_error_and_leaves_nothing(gh: Server, standin: GitHubStandIn) -> None:
    with gh.client() as alice:
        app = register(alice, standin, private_key=new_private_key())
        with pytest.raises(APIError) as refused:
            alice.create(repo={"repository": REPOSITORY, "app": app})
        assert refused.value.status_code == 502 and "401" in refused.value.detail, refused.value
        with pytest.raises(APIError) as unknown:
            alice.create(repo={"repository": REPOSITORY, "app": "gh-0123456789abcdef"})
        assert unknown.value.status_code == 404
        assert alice.list() == []
        alice._call("DELETE", f"/github/apps/{app}")


def test_the_key_can_be_rotated_while_the_server_runs(tmp_path: Path, standin: GitHubStandIn) -> None:
    def serve(env: dict[str, str]) -> Server:
        return Server(tmp_path, env={**env, **ALLOWED}).start()

    def checks_out(server: Server) -> bool:
        with server.client() as alice:
            workspace = alice.create(repo={"repository": REPOSITORY}, network="none")
            alice.delete(workspace.id)
        return True

    server = serve({"GITHUB_APP_ENCRYPTION_KEY": KEY})
    with server.client() as alice:
        app = register(alice, standin)
    server.stop()
    old_seal = sealed_key(server, app)
    # 1. Both keys: the server reads what either sealed. 2. Rotate while it runs. 3. Only the new key.
    server = serve({"GITHUB_APP_ENCRYPTION_KEY": NEW_KEY, "GITHUB_APP_ENCRYPTION_OLD_KEY": KEY})
    try:
        assert checks_out(server)
        env = {"WORKSPACE_DATA_DIR": str(tmp_path), "GITHUB_APP_ENCRYPTION_KEY": NEW_KEY}
        rotated = subprocess.run(
            [sys.executable, "-m", "agentbox.cli", "github", "rotate-key"],
            env={**server.env, **env, "GITHUB_APP_ENCRYPTION_OLD_KEY": KEY},
            capture_output=True,
            text=True,
        )
        assert rotated.returncode == 0 and "re-encrypted 2 secret(s) of 1 GitHub App(s)" in rotated.stdout, rotated
        assert sealed_key(server, app) != old_seal
        assert checks_out(server)
    finally:
        server.stop()
    server = serve({"GITHUB_APP_ENCRYPTION_KEY": NEW_KEY})
    try:
        assert checks_out(server)
    finally:
        server.stop()
    # The old key alone opens nothing any more, and says why.
    server = serve({"GITHUB_APP_ENCRYPTION_KEY": KEY})
    try:
        with server.client() as alice, pytest.raises(APIError) as refused:
            alice.create(repo={"repository": REPOSITORY})
        assert refused.value.status_code == 503 and "GITHUB_APP_ENCRYPTION_OLD_KEY" in refused.value.detail
        assert rotated.stdout.count("re-encrypted") == 1
        again = subprocess.run(
            [sys.executable, "-m", "agentbox.cli", "github", "rotate-key"],
            env={**server.env, "GITHUB_APP_ENCRYPTION_KEY": KEY},
            capture_output=True,
            text=True,
        )
        said = " ".join(again.stderr.split())  # as the terminal wrapped it
        assert again.returncode == 1 and "nothing was changed" in said and "Traceback" not in said
    finally:
        server.stop()


def test_without_a_key_the_github_endpoints_say_they_are_not_configured(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    try:
        with server.client() as alice:
            with pytest.raises(APIError) as listing:
                alice._call("GET", "/github/apps")
            assert listing.value.status_code == 404 and "GITHUB_APP_ENCRYPTION_KEY" in listing.value.detail
            with pytest.raises(APIError) as create:
                alice.create(repo={"repository": REPOSITORY})
            assert create.value.status_code == 400 and "GITHUB_APP_ENCRYPTION_KEY" in create.value.detail
            assert alice.list() == []
    finally:
        server.stop()


def test_a_push_wakes_a_suspended_workspace(gh: Server, standin: GitHubStandIn) -> None:
    with gh.client() as alice:
        app = register(alice, standin)
        workspace = alice.create(repo={"repository": REPOSITORY, "app": app}, idle_timeout=2)
        try:
            change = (
                "cd /workspace/hello && git checkout -q -b agent/asleep && echo zzz > ASLEEP.md && git add ASLEEP.md "
                "&& git -c user.name=agent -c user.email=agent@example.com commit -q -m asleep && git rev-parse HEAD"
            )
            commit = alice.exec(workspace.id, change).stdout.strip()
            eventually(lambda: alice.get(workspace.id).suspended)
            pushed = alice.git_push(workspace.id)
            assert (pushed.branch, pushed.commit) == ("agent/asleep", commit)
            assert standin.branch(REPOSITORY, "agent/asleep") == commit
            assert not alice.get(workspace.id).suspended
        finally:
            alice.delete(workspace.id)
