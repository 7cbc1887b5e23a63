"""Talking to GitHub as an App: the App's JWT, and installation access tokens minted from it.

As GitHub documents it: an RS256 JWT signed with the App's private key, `iss` = the App id,
issued a minute in the past (clock skew) and valid for 9 minutes (GitHub's maximum is 10);
then `POST /app/installations/{id}/access_tokens`, optionally scoped to repositories. Tokens
live an hour; they are cached until 5 minutes before they expire.

Connections go only where `egress.EgressPolicy` allows (public addresses, or hosts the operator
allowed), checked at each connection. What the remote answers is never repeated in an error: a
URL that reaches somewhere it should not must not become a way to read that place.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt

from agentbox.errors import AgentboxError
from agentbox.github.egress import SETTING, EgressPolicy, PinnedTransport, Refused
from agentbox.wire.domain import GITHUB_API

JWT_BACKDATE = 60  # seconds: the issuer's clock may be ahead of GitHub's
JWT_LIFETIME = 9 * 60
TOKEN_MARGIN = timedelta(minutes=5)
HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
#: GitHub's answers to the two calls made are a few hundred bytes; more is not GitHub.
MAX_ANSWER = 1 << 20
#: What to do about a refusal, by GitHub's status.
_ADVICE = {
    401: "GitHub did not accept the App's JWT: check the App's id and private key",
    403: "the App lacks a permission: give it contents read and write access",
    404: "the App is not installed on the repository, or the repository does not exist: install the App on it",
    422: "GitHub refused the request: check the repository's name and that the App is installed on it",
}


class GitHubError(AgentboxError):
    """GitHub (or GitHub Enterprise Server) refused or could not be reached; the detail says which."""

    status_code = 502


@dataclass(frozen=True)
class AppCredentials:
    """A registered App with its private key opened, for the moment it is needed."""

    id: str
    app_id: int
    api_url: str
    private_key: str
    git_url: str  # where its repositories are served


def git_url_of(api_url: str) -> str:
    """Where an App's repositories are served unless it says: github.com for api.github.com, else the server itself."""
    if api_url.rstrip("/") == GITHUB_API:
        return "https://github.com"
    return api_url.rstrip("/").removesuffix("/api/v3")


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: datetime


def app_jwt(app: AppCredentials, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time()) - JWT_BACKDATE
    claims = {"iat": issued, "exp": issued + JWT_BACKDATE + JWT_LIFETIME, "iss": str(app.app_id)}
    return jwt.encode(claims, app.private_key, algorithm="RS256")


class TokenMinter:
    """Installation tokens per (App, installation, repositories), cached until shortly before they expire."""

    def __init__(self, policy: EgressPolicy | None = None, timeout: float = 30.0) -> None:
        self._http = httpx.Client(timeout=timeout, headers=HEADERS, transport=PinnedTransport(policy or EgressPolicy()))
        self._cache: dict[tuple[str, int, tuple[str, ...]], Token] = {}
        self._installations: dict[tuple[str, str], int] = {}  # (App, owner/name): the egress proxy asks per request
        self._lock = threading.Lock()

    def installation_of(self, app: AppCredentials, repository: str) -> int:
        """The App's installation on `owner/name` (remembered until `forget`)."""
        key = (app.id, repository.lower())
        with self._lock:
            known = self._installations.get(key)
        if known is not None:
            return known
        answer = self._call(app, "GET", f"/repos/{repository}/installation")
        installation = answer.get("id")
        if not isinstance(installation, int):
            raise _not_github(app, "GET", "/repos/{owner}/{repo}/installation")
        with self._lock:
            self._installations[key] = installation
        return installation

    def token(
        self, app: AppCredentials, installation_id: int, repositories: tuple[str, ...] = (), fresh: bool = False
    ) -> Token:
        """A token for the installation, scoped to `repositories` (names without the owner) if given."""
        key = (app.id, installation_id, repositories)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and not fresh and cached.expires_at - TOKEN_MARGIN > datetime.now(UTC):
                return cached
        body = {"repositories": list(repositories)} if repositories else {}
        answer = self._call(app, "POST", f"/app/installations/{installation_id}/access_tokens", json=body)
        try:
            token = Token(
                str(answer["token"]), datetime.fromisoformat(str(answer["expires_at"]).replace("Z", "+00:00"))
            )
        except (KeyError, ValueError):
            raise _not_github(app, "POST", "/app/installations/{id}/access_tokens") from None
        with self._lock:
            self._cache[key] = token
        return token

    def forget(self, app_id: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == app_id]:
                del self._cache[key]
            for known in [k for k in self._installations if k[0] == app_id]:
                del self._installations[known]

    def close(self) -> None:
        self._http.close()

    def _call(self, app: AppCredentials, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = app.api_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {app_jwt(app)}"}
        try:
            with self._http.stream(method, url, headers=headers, **kwargs) as response:
                status = response.status_code
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_ANSWER:
                        raise _not_github(app, method, path)
        except Refused as exc:
            raise GitHubError(
                f"GitHub App {app.id}'s api_url {app.api_url} is refused: {exc}. Register the App again "
                f"with a public https api_url, or ask the operator to allow its host in {SETTING}"
            ) from None
        except httpx.HTTPError as exc:
            raise GitHubError(f"GitHub at {app.api_url} cannot be reached ({exc}); check the App's api_url") from None
        if status >= 400:
            # The status and what to do, never the answer's text (see the module's docstring).
            advice = _ADVICE.get(status, f"check the App's api_url ({app.api_url}) and try again")
            raise GitHubError(f"GitHub answered {method} {path} with {status} (App {app.app_id}): {advice}")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status not in (200, 201) or not isinstance(answer, dict):
            raise _not_github(app, method, path)
        return answer


def _not_github(app: AppCredentials, method: str, path: str) -> GitHubError:
    return GitHubError(
        f"the answer to {method} {path} from {app.api_url} is not GitHub's API (App {app.app_id}): "
        "check the App's api_url (https://api.github.com, or https://HOST/api/v3 for Enterprise Server)"
    )
