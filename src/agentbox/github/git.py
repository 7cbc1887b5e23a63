"""git on the service's side: clone a repository and push a branch, with a token that stays here.

The token reaches git only through the environment of one git process (an `http.extraHeader`
set by GIT_CONFIG_* variables): never in a URL, a config file, or the command line. The
workspace only ever receives the checked-out files and gives back a bundle.

git connects only to the address the service checked for the host (`pin`, libcurl's resolve
list: see `egress`), and follows no redirect (which could lead anywhere).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agentbox.errors import AgentboxError, BadRequest


class GitError(AgentboxError):
    """git failed; the detail carries its message (which never holds the token)."""

    status_code = 502


def _environment(token: str | None, home: Path, pin: str | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # nothing from the service user's own git configuration
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    config = {"http.followRedirects": "false"}
    if token is not None:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config["http.extraHeader"] = f"Authorization: Basic {basic}"
    if pin is not None:
        config["http.curloptResolve"] = pin
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config.items()):
        env |= {f"GIT_CONFIG_KEY_{index}": key, f"GIT_CONFIG_VALUE_{index}": value}
    return env


def _git(*args: str, token: str | None = None, cwd: Path | None = None, pin: str | None = None) -> str:
    if shutil.which("git") is None:
        raise GitError("git is not installed on the agentbox server: apt-get install -y git")
    with tempfile.TemporaryDirectory(prefix="agentbox-git-home-") as home:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=_environment(token, Path(home), pin),
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise GitError(
            f"git {args[0]} failed: {done.stderr.strip()[-500:] or done.returncode} (check the repository's name "
            "and that the GitHub App is installed on it with contents read and write access)"
        )
    return done.stdout


def clone(url: str, token: str, ref: str | None, into: Path, pin: str | None = None) -> None:
    """Clone `url` into `into` (which must not exist), then check out `ref` if given."""
    _git("clone", "--quiet", url, str(into), token=token, pin=pin)
    if ref:
        try:
            _git("checkout", "--quiet", ref, cwd=into)
        except GitError as exc:
            raise BadRequest(f"repo.ref {ref!r} is not in the repository: {exc.detail}") from None


def tar_stream(directory: Path) -> Iterator[bytes]:
    """`directory`'s contents as a tar stream (spooled to disk past 8 MiB)."""
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        with tarfile.open(fileobj=spool, mode="w") as tar:
            for entry in sorted(directory.iterdir()):
                tar.add(entry, arcname=entry.name)
        spool.seek(0)
        yield from iter(lambda: spool.read(1 << 16), b"")


def push_bundle(bundle: Path, branch: str, url: str, token: str, pin: str | None = None) -> str:
    """Push `branch` from a git bundle to `url`; the commit pushed."""
    with tempfile.TemporaryDirectory(prefix="agentbox-push-") as scratch:
        repo = Path(scratch) / "repo.git"
        _git("init", "--quiet", "--bare", str(repo))
        ref = f"refs/heads/{branch}"
        _git("fetch", "--quiet", str(bundle), f"{ref}:{ref}", cwd=repo)
        _git("push", "--quiet", url, f"{ref}:{ref}", token=token, cwd=repo, pin=pin)
        return _git("rev-parse", ref, cwd=repo).strip()
