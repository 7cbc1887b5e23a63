"""A local stand-in for GitHub (Enterprise Server layout: the API under /api/v3, git at the root).

It speaks the two API calls agentbox makes, checking the App's JWT with the App's real public
key as GitHub does, and serves real repositories through git's own `git http-backend`,
accepting only the installation tokens it minted (HTTP Basic, user `x-access-token`), only
for the repositories they were minted for, and only until they expire.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests import git_http
from tests.git_http import Minted, token_allows

from .conftest import free_port

INSTALLATION_ID = 4242
MAX_JWT_LIFETIME = 600  # GitHub refuses App JWTs that live longer than 10 minutes


def new_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


@dataclass
class GitHubStandIn:
    app_id: int
    private_key: str  # the App's key: agentbox gets it; the stand-in keeps only the public half
    root: Path  # bare repositories, as root/<owner>/<name>.git
    #: Where each token minted is also written (git_http.Minted.append_to): for a git server elsewhere.
    tokens_file: Path | None = None
    port: int = field(default_factory=free_port)
    minted: list[Minted] = field(default_factory=list)
    verified_jwts: int = 0
    _server: uvicorn.Server | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v3"

    def add_repository(self, repository: str, files: dict[str, str]) -> Path:
        bare = self.root / f"{repository}.git"
        with tempfile.TemporaryDirectory() as work:
            env = {**os.environ, "GIT_AUTHOR_NAME": "octo", "GIT_AUTHOR_EMAIL": "octo@example.com"}
            env |= {"GIT_COMMITTER_NAME": "octo", "GIT_COMMITTER_EMAIL": "octo@example.com"}
            subprocess.run(["git", "init", "-q", "-b", "main", work], check=True, env=env)
            for name, content in files.items():
                (Path(work) / name).write_text(content)
            subprocess.run(["git", "-C", work, "add", "."], check=True, env=env)
            subprocess.run(["git", "-C", work, "commit", "-q", "-m", "initial"], check=True, env=env)
            subprocess.run(["git", "clone", "-q", "--bare", work, str(bare)], check=True, env=env)
        return bare

    def branch(self, repository: str, name: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(self.root / f"{repository}.git"), "rev-parse", "--verify", "-q", f"refs/heads/{name}"],
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or None

    # The API

    def _app_from_jwt(self, request: Request) -> JSONResponse | None:
        """None if the request carries a valid App JWT, else GitHub's answer."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        public_key = serialization.load_pem_private_key(self.private_key.encode(), None).public_key()
        try:
            claims = jwt.decode(
                token, public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "iss"]}, leeway=60
            )
        except jwt.PyJWTError as exc:
            return JSONResponse({"message": f"A JSON web token could not be decoded ({exc})"}, status_code=401)
        if scheme.lower() != "bearer" or claims["iss"] != str(self.app_id):
            return JSONResponse({"message": "Integration not found"}, status_code=401)
        if claims["exp"] - claims["iat"] > MAX_JWT_LIFETIME:
            return JSONResponse(
                {"message": "'Expiration time' claim ('exp') is too far in the future"}, status_code=401
            )
        self.verified_jwts += 1
        return None

    async def installation(self, request: Request) -> Response:
        refused = self._app_from_jwt(request)
        if refused is not None:
            return refused
        repository = f"{request.path_params['owner']}/{request.path_params['repo']}"
        if not (self.root / f"{repository}.git").exists():
            return JSONResponse({"message": "Not Found"}, status_code=404)
        return JSONResponse({"id": INSTALLATION_ID, "app_id": self.app_id})

    async def access_token(self, request: Request) -> Response:
        refused = self._app_from_jwt(request)
        if refused is not None:
            return refused
        if int(request.path_params["installation"]) != INSTALLATION_ID:
            return JSONResponse({"message": "Not Found"}, status_code=404)
        body = await request.json() if await request.body() else {}
        minted = Minted(
            "ghs_" + secrets.token_urlsafe(27),
            tuple(body.get("repositories", ())),
            datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1),
        )
        self.minted.append(minted)
        if self.tokens_file is not None:
            minted.append_to(self.tokens_file)
        return JSONResponse(
            {
                "token": minted.token,
                "expires_at": minted.expires_at.isoformat().replace("+00:00", "Z"),
                "permissions": {"contents": "write", "metadata": "read"},
                "repository_selection": "selected" if minted.repositories else "all",
            },
            status_code=201,
        )

    # git over HTTP

    async def git(self, request: Request) -> Response:
        owner, repo = request.path_params["owner"], request.path_params["repo"]
        if not token_allows(request.headers.get("authorization", ""), repo, self.minted):
            return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
        status, headers, payload = await asyncio.to_thread(
            git_http.serve,
            self.root,
            request.method,
            f"/{owner}/{repo}.git/{request.path_params['rest']}",
            request.url.query,
            request.headers.get("content-type", ""),
            request.headers.get("content-encoding", ""),
            await request.body(),
        )
        return Response(payload, status_code=status, headers=headers)

    # Running

    def start(self) -> GitHubStandIn:
        app = Starlette(
            routes=[
                Route("/api/v3/repos/{owner}/{repo}/installation", self.installation),
                Route("/api/v3/app/installations/{installation}/access_tokens", self.access_token, methods=["POST"]),
                Route("/{owner}/{repo}.git/{rest:path}", self.git, methods=["GET", "POST"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "the GitHub stand-in did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
