"""GitHub through the egress proxy: plain `git clone`, `fetch` and `push` inside a workspace, to a registered
App's granted repositories only, with the App's installation token put into each request by the proxy.

The git server is the stand-in internet's (tests/egress_lab.py's World, a namespace reached through the
proxy): `git http-backend` over HTTPS on `github.test`, accepting only the tokens the GitHub stand-in's API
(tests/integration/github_standin.py, on loopback, where the server mints them) minted for the repository.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import docker
import pytest

from agentbox.client import APIError, Client
from tests.egress_lab import World

from .conftest import Server, egress_server
from .github_standin import GitHubStandIn, new_private_key

NETWORK = "agentbox-test-egress-gh-net"
KEY = "6b" * 32
GIT_HOST = "github.test"
README = "hello from the granted repository\n"
GIT = "git -c user.name=agent -c user.email=agent@example.com"


class GitHubWorld(World):
    """The stand-in internet of this file: its own namespace, link and addresses (beside the other egress tests')."""

    NAMESPACE = "agentbox-test-gh-world"
    ADDRESSES = ("198.51.100.95", "198.51.100.96")
    dns = "10.218.0.10"
    HOST_SIDE = "10.218.0.9"
    LINK = "abx-ghw"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with GitHubWorld(tmp_path_factory.mktemp("github-world")) as running:
        running.zone({GIT_HOST: [GitHubWorld.ADDRESSES[0]]})
        yield running


@pytest.fixture(scope="module")
def github(world: World) -> Iterator[GitHubStandIn]:
    standin = GitHubStandIn(
        app_id=4711,
        private_key=new_private_key(),
        root=world.directory / "git",
        tokens_file=world.directory / "github-tokens.jsonl",
    )
    standin.add_repository("octo/hello", {"README.md": README})
    standin.add_repository("octo/secret", {"SECRET.md": "not granted\n"})
    yield standin.start()
    standin.stop()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, world: World
) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("egress-github")
    # The stand-in's API is on loopback, which the server reaches for an App only when told to.
    env = {"GITHUB_APP_ENCRYPTION_KEY": KEY, "GITHUB_API_ALLOWED_HOSTS": "127.0.0.1"}
    with egress_server(path, docker_client, NETWORK, world, **env) as server:
        yield server


def register(client: Client, github: GitHubStandIn, git_url: str = f"https://{GIT_HOST}") -> str:
    body = {"app_id": github.app_id, "private_key": github.private_key, "api_url": github.api_url, "git_url": git_url}
    return str(client._call("POST", "/github/apps", json=body).json()["id"])


def test_git_reaches_the_granted_repositories_only_with_a_token_the_workspace_never_holds(
    served: Server, github: GitHubStandIn, world: World
) -> None:
    with served.client() as alice:
        app = register(alice, github)
        # Whatever host a caller writes, the grant's is the App's git host: the token goes nowhere else.
        grant = {"app": app, "repositories": ["octo/hello"], "host": "attacker.test", "port": 8443}
        workspace = alice.create(network={"github": [grant]})
        try:
            assert workspace.network.model_dump(mode="json")["github"] == [  # type: ignore[union-attr]
                {"app": app, "repositories": ["octo/hello"], "host": GIT_HOST, "port": 443}
            ]
            work = (
                f"set -e; cd /workspace; git clone -q https://{GIT_HOST}/octo/hello.git; cd hello; cat README.md; "
                f"git checkout -q -b agent/change; echo by-the-agent > CHANGE.md; git add CHANGE.md; "
                f"{GIT} commit -q -m change; git push -q origin agent/change; git rev-parse HEAD"
            )
            done = alice.exec(workspace.id, ["sh", "-c", work], timeout=120)
            assert done.exit_code == 0, done
            assert done.stdout.startswith(README)
            commit = done.stdout.split()[-1]
            assert github.branch("octo/hello", "agent/change") == commit  # pushed, to "GitHub"
            assert github.minted and all(m.repositories == ("hello",) for m in github.minted)  # scoped to the grant
            fetched = alice.exec(workspace.id, "cd /workspace/hello && git fetch -q origin && git rev-parse FETCH_HEAD")
            assert fetched.exit_code == 0, fetched

            # Another repository on the same host, an escape from the granted path, plain HTTP: refused, audited.
            probes = (
                f"git ls-remote https://{GIT_HOST}/octo/secret.git",
                f"curl -sS -o /dev/null -w '%{{http_code}}' https://{GIT_HOST}/octo/hello.git/../secret.git/info/refs",
                f"curl -sS --path-as-is -o /dev/null -w '%{{http_code}}' "
                f"'https://{GIT_HOST}/octo/hello.git/../../octo/secret.git/info/refs?service=git-upload-pack'",
                f"curl -sS -o /dev/null -w '%{{http_code}}' http://{GIT_HOST}:443/octo/hello.git/info/refs",
            )
            outcomes = [alice.exec(workspace.id, ["sh", "-c", probe + " 2>&1"], timeout=60) for probe in probes]
            assert outcomes[0].exit_code != 0 and "403" in outcomes[0].stdout, outcomes[0]
            assert outcomes[1].stdout == outcomes[2].stdout == "403", outcomes[1:3]  # the proxy's, not the server's
            assert outcomes[3].stdout == "403", outcomes[3]  # a grant is HTTPS only: a token never goes in clear
            rules = [
                str(r.arguments["rule"]) for r in alice.audit(workspace.id).records if r.action == "EGRESS refused"
            ]
            assert any("/octo/secret.git/info/refs" in rule and "not a granted repository" in rule for rule in rules)
            assert any("HTTPS only" in rule for rule in rules), rules
            assert not any("secret" in r["path"] for r in world.requests())  # none of them reached the server

            # What reached the server carried the App's token, as GitHub takes it; the workspace never had it.
            tokens = [m.token for m in github.minted]
            git_requests = [r for r in world.requests() if r["path"].startswith("/octo/hello")]
            assert git_requests and all(
                base64.b64decode(r["headers"]["Authorization"].split()[1]).decode().split(":")[1] in tokens
                for r in git_requests
            )
            environment = alice.exec(workspace.id, "env; cat /proc/[0-9]*/environ | tr '\\0' '\\n'").stdout
            assert "HOME=" in environment and not any(token in environment for token in tokens)
            alice.write_file(workspace.id, "/tmp/needles", "\n".join(tokens).encode())
            found = alice.exec(
                workspace.id,
                "grep -rl -F -f /tmp/needles / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; rm /tmp/needles",
                timeout=300,
            ).stdout
            assert found.split() == ["/tmp/needles"], found  # the search's own list, nothing else
            config = alice.exec(workspace.id, "cat /workspace/hello/.git/config").stdout
            assert "url = " in config and "x-access-token" not in config and "extraheader" not in config.lower()
            assert not any(token in served.log() for token in tokens)
        finally:
            alice.delete(workspace.id)


def test_a_grant_of_an_app_not_yours_or_not_on_https_is_refused_with_what_to_fix(
    served: Server, github: GitHubStandIn
) -> None:
    with served.client("alice") as alice, served.client("bob") as bob:
        app = register(alice, github)
        plain = register(alice, github, git_url=f"http://127.0.0.1:{github.port}")
        cases = [
            (bob, {"app": app, "repositories": ["octo/hello"]}, "network.github[0].app"),
            (alice, {"app": "gh-0000000000000000", "repositories": ["octo/hello"]}, "network.github[0].app"),
            (alice, {"app": plain, "repositories": ["octo/hello"]}, "not over https"),
            (alice, {"app": app, "repositories": ["octo/hello", "other/repo"]}, "one owner per grant"),
            (alice, {"app": app, "repositories": ["not a repository"]}, "repositories"),
        ]
        for client, grant, detail in cases:
            with pytest.raises(APIError) as refused:
                client.create(network={"github": [grant]})
            assert refused.value.status_code == 422 and detail in str(refused.value), refused.value
        workspace = alice.create(network="egress")
        try:
            with pytest.raises(APIError) as patched:
                alice.set_network(workspace.id, {"github": [{"app": "gh-0000000000000000", "repositories": ["o/r"]}]})
            assert patched.value.status_code == 422 and "network.github[0].app" in patched.value.detail
        finally:
            alice.delete(workspace.id)
