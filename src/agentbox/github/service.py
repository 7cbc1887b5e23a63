"""GitHub Apps for an agentbox server: registrations with sealed secrets, checkouts and pushes.

Repositories move through the service, never through the workspace's network: the service
clones with a short-lived installation token and copies the files in; a push takes a git
bundle out of the workspace and pushes it with a freshly minted token. So no token or key
ever enters a workspace, and it works for workspaces with no network at all.

The server connects only where `egress` allows (an App's api_url and git host: https and public
addresses, unless the operator allowed the host), checked at registration and at each connection.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from agentbox.db.models import GitHubApp, new_app_id, utcnow
from agentbox.db.store import Store
from agentbox.errors import AgentboxError, BadRequest, Conflict, NotFound, Unprocessable
from agentbox.github import git
from agentbox.github.app import AppCredentials, GitHubError, TokenMinter, git_url_of
from agentbox.github.crypto import DecryptError, Keyring
from agentbox.github.egress import SETTING, EgressPolicy, Refused
from agentbox.sandbox.runtime import ExecRequest, Runtime
from agentbox.wire.domain import Checkout
from agentbox.wire.github import RegisterApp

log = logging.getLogger("agentbox.github")

BUNDLE_IN_WORKSPACE = "/tmp/.agentbox-push.bundle"


class SealedSecretError(AgentboxError):
    """A stored secret cannot be opened with the configured keys."""

    status_code = 503


def _context(app_row_id: str, column: str) -> str:
    """What a sealed value is bound to: a copy in another row or column does not open."""
    return f"github_apps/{app_row_id}/{column}"


class GitHub:
    def __init__(
        self, store: Store, keyring: Keyring, allowed_hosts: Iterable[str] = (), minter: TokenMinter | None = None
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.egress = EgressPolicy(allowed_hosts)
        self.minter = minter or TokenMinter(self.egress)

    # Registrations

    def register(self, owner: str, body: RegisterApp) -> GitHubApp:
        for field, url in (("api_url", body.api_url), ("git_url", body.git_url)):
            try:
                if url is not None:
                    self.egress.check(url)
            except Refused as exc:
                raise BadRequest(
                    f"{field}: {exc} (hosts on the server's own network are reached only when the operator lists "
                    f"them in {SETTING})"
                ) from None
        row_id = new_app_id()
        app = GitHubApp(
            id=row_id,
            owner=owner,
            app_id=body.app_id,
            api_url=body.api_url,
            git_url=body.git_url,
            private_key=self.keyring.seal(
                body.private_key.get_secret_value().encode(), _context(row_id, "private_key")
            ),
            webhook_secret=None
            if body.webhook_secret is None
            else self.keyring.seal(body.webhook_secret.get_secret_value().encode(), _context(row_id, "webhook_secret")),
            created_at=utcnow(),
        )
        with self.store.session() as session:
            session.add(app)
        log.info("GitHub App %s registered by %s as %s (%s)", body.app_id, owner, row_id, body.api_url)
        return app

    def apps(self, owner: str) -> list[GitHubApp]:
        with self.store.session() as session:
            query = select(GitHubApp).where(GitHubApp.owner == owner).order_by(GitHubApp.created_at)
            return list(session.scalars(query))

    def app(self, owner: str, row_id: str) -> GitHubApp:
        with self.store.session() as session:
            app = session.get(GitHubApp, row_id)
        if app is None or app.owner != owner:
            raise NotFound(f"no GitHub App {row_id!r}: list yours with GET /api/v1/github/apps")
        return app

    def delete(self, owner: str, row_id: str) -> None:
        app = self.app(owner, row_id)
        with self.store.session() as session:
            session.delete(session.get(GitHubApp, app.id))
        self.minter.forget(app.id)

    def choose(self, owner: str, spec: Checkout) -> GitHubApp:
        """The App a checkout uses: the one named, or the owner's only one."""
        if spec.app is not None:
            return self.app(owner, spec.app)
        apps = self.apps(owner)
        if len(apps) != 1:
            raise BadRequest(
                "repo.app: name the GitHub App to use (GET /api/v1/github/apps lists yours)"
                if apps
                else "no GitHub App is registered for you: register one with POST /api/v1/github/apps"
            )
        return apps[0]

    def credentials(self, app: GitHubApp) -> AppCredentials:
        try:
            private_key = self.keyring.open(app.private_key, _context(app.id, "private_key")).decode()
        except DecryptError as exc:
            raise SealedSecretError(
                f"the private key of GitHub App {app.id} cannot be decrypted ({exc}): was GITHUB_APP_ENCRYPTION_KEY "
                "changed without `agentbox github rotate-key`? Give the previous key as GITHUB_APP_ENCRYPTION_OLD_KEY"
            ) from None
        return AppCredentials(app.id, app.app_id, app.api_url, private_key, app.git_url or git_url_of(app.api_url))

    def rotate(self) -> tuple[int, int]:
        """Re-seal every secret under the current key, in one transaction; (re-sealed, total)."""
        resealed = 0
        with self.store.session() as session:
            apps = list(session.scalars(select(GitHubApp)))
            for app in apps:
                for column in ("private_key", "webhook_secret"):
                    sealed: bytes | None = getattr(app, column)
                    if sealed is None or self.keyring.sealed_with_current(sealed):
                        continue
                    context = _context(app.id, column)
                    try:
                        plaintext = self.keyring.open(sealed, context)
                    except DecryptError as exc:
                        raise SealedSecretError(
                            f"GitHub App {app.id}: its {column} cannot be decrypted ({exc}); nothing was changed: "
                            "give the key it was sealed with as GITHUB_APP_ENCRYPTION_OLD_KEY"
                        ) from None
                    setattr(app, column, self.keyring.seal(plaintext, context))
                    resealed += 1
        return resealed, len(apps)

    # Repositories

    def git_host(self, registered: GitHubApp, field: str) -> tuple[str, int]:
        """The host and port of the App's git server, where the egress proxy puts its tokens; Unprocessable
        (naming `field`) when it is not https, since a token must never cross the network in clear text."""
        url = urlsplit(registered.git_url or git_url_of(registered.api_url))
        if url.scheme != "https" or url.hostname is None:
            raise Unprocessable(
                f"{field}: GitHub App {registered.id} serves git at {url.geturl()}, not over https: the proxy puts an "
                "App's token only into HTTPS requests; register the App with an https git_url"
            )
        return url.hostname.lower(), url.port or 443

    def repositories_token(self, owner: str, row_id: str, repositories: Sequence[str]) -> str:
        """An installation token of `owner`'s App `row_id` for `repositories` (owner/name, one installation's), with
        the App's permissions on them (a push needs the App's contents: write). Raises what minting raises."""
        app = self.credentials(self.app(owner, row_id))
        installation = self.minter.installation_of(app, repositories[0])
        names = tuple(sorted({repository.split("/")[1] for repository in repositories}))
        return self.minter.token(app, installation, names).value

    def checkout(self, registered: GitHubApp, spec: Checkout, runtime: Runtime) -> dict[str, Any]:
        """Clone `spec` with the App `registered` and copy it into /workspace/<name> of the workspace that
        `runtime` reaches; what the record keeps."""
        app = self.credentials(registered)
        installation = spec.installation_id or self.minter.installation_of(app, spec.repository)
        token = self.minter.token(app, installation, (spec.name,))
        path = f"/workspace/{spec.name}"
        with tempfile.TemporaryDirectory(prefix="agentbox-clone-") as scratch:
            clone = Path(scratch) / spec.name
            url = f"{app.git_url}/{spec.repository}.git"
            git.clone(url, token.value, spec.ref, clone, self._pin(app, url))
            runtime.write_archive(path, git.tar_stream(clone))
        return {
            "repository": spec.repository,
            "ref": spec.ref,
            "app": app.id,
            "installation_id": installation,
            "path": path,
        }

    def push(self, owner: str, repo: dict[str, Any], runtime: Runtime) -> tuple[str, str]:
        """Push the current branch of the checkout in the workspace that `runtime` reaches; (branch, commit)."""
        app = self.credentials(self.app(owner, repo["app"]))
        checkout = shlex.quote(repo["path"])
        script = (
            f"cd {checkout} && branch=$(git symbolic-ref --short HEAD) && "
            f'git bundle create --quiet {BUNDLE_IN_WORKSPACE} "$branch" && echo "$branch"'
        )
        made = runtime.exec(ExecRequest(argv=["/bin/sh", "-c", script], timeout=300))
        if made.exit_code != 0:
            raise Conflict(
                f"cannot bundle the current branch of {repo['path']} (is a branch checked out, with a commit?): "
                f"{(made.stderr or made.stdout).strip()[-300:]}"
            )
        branch = made.stdout.strip().splitlines()[-1]
        try:
            with tempfile.NamedTemporaryFile(prefix="agentbox-push-", suffix=".bundle") as bundle:
                for chunk in runtime.read_file(BUNDLE_IN_WORKSPACE)[1]:
                    bundle.write(chunk)
                bundle.flush()
                token = self.minter.token(app, int(repo["installation_id"]), (repo["repository"].split("/")[1],), True)
                url = f"{app.git_url}/{repo['repository']}.git"
                commit = git.push_bundle(Path(bundle.name), branch, url, token.value, self._pin(app, url))
        finally:
            runtime.exec(ExecRequest(argv=["rm", "-f", BUNDLE_IN_WORKSPACE]))
        return branch, commit

    def _pin(self, app: AppCredentials, url: str) -> str | None:
        """Where git may connect for `url` (see `egress.EgressPolicy.curl_resolve`)."""
        try:
            return self.egress.curl_resolve(url)
        except Refused as exc:
            raise GitHubError(
                f"GitHub App {app.id}'s git host is refused: {exc}. Register the App again with a public https "
                f"api_url, or ask the operator to allow its host in {SETTING}"
            ) from None

    def close(self) -> None:
        self.minter.close()
