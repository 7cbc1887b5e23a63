"""git's smart HTTP as GitHub serves it: `git http-backend` (git's own CGI) behind GitHub's check of an
installation token. Shared by the GitHub stand-in (tests/integration/github_standin.py, on loopback) and the
egress world's HTTPS server (tests/egress_lab.py, inside a network namespace, where workspaces reach it
through the egress proxy); the world reads the stand-in's tokens from a file (`Minted.append_to`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class Minted:
    token: str
    repositories: tuple[str, ...]  # names without the owner, as GitHub takes them; empty: all
    expires_at: datetime

    def append_to(self, path: Path) -> None:
        entry = {"token": self.token, "repositories": self.repositories, "expires_at": self.expires_at.isoformat()}
        with path.open("a") as file:
            file.write(json.dumps(entry) + "\n")

    @staticmethod
    def read(path: Path) -> list[Minted]:
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [Minted(e["token"], tuple(e["repositories"]), datetime.fromisoformat(e["expires_at"])) for e in entries]


def token_allows(authorization: str, repo: str, minted: list[Minted]) -> bool:
    """GitHub's check: HTTP Basic, user `x-access-token`, a token minted for `repo` and not expired."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    now = datetime.now(UTC)
    return user == "x-access-token" and any(
        m.token == password and m.expires_at > now and (not m.repositories or repo in m.repositories) for m in minted
    )


def serve(
    root: Path, method: str, path_info: str, query: str, content_type: str, content_encoding: str, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One request to `git http-backend` over the bare repositories under `root` (root/OWNER/NAME.git):
    (status, headers, body)."""
    env = {
        "PATH": os.environ["PATH"],
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "REQUEST_METHOD": method,
        "CONTENT_TYPE": content_type,
        "HTTP_CONTENT_ENCODING": content_encoding,
        "REMOTE_USER": "x-access-token",  # lets receive-pack (push) through
        "REMOTE_ADDR": "127.0.0.1",
    }
    done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    status, headers = 200, {}
    for line in head.decode().split("\r\n"):
        name, _, value = line.partition(": ")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name] = value
    return status, headers, payload
