"""The bodies of GitHub Apps (routes: api/github.py), and of a repository checked out into a workspace
when it is made (the `repo` of a workspace's create and of its answer).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from agentbox.wire.domain import GITHUB_API, Checkout


def _pem_private_key(value: SecretStr) -> SecretStr:
    try:
        key = serialization.load_pem_private_key(value.get_secret_value().encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("is not a PEM private key without a passphrase (-----BEGIN ... PRIVATE KEY-----)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("must be an RSA key, as GitHub Apps' keys are")
    return value


def _api_url(value: str) -> str:
    if not value.startswith(("https://", "http://")) or any(c.isspace() for c in value):
        raise ValueError("must be an http(s) URL: https://api.github.com, or https://HOST/api/v3 for Enterprise Server")
    return value.rstrip("/")


class RegisterApp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: int = Field(gt=0, lt=1 << 53, description="the App's id on GitHub")
    private_key: Annotated[SecretStr, Field(max_length=16384), AfterValidator(_pem_private_key)]
    webhook_secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = None
    api_url: Annotated[str, Field(max_length=512), AfterValidator(_api_url)] = GITHUB_API
    git_url: Annotated[str, Field(max_length=512), AfterValidator(_api_url)] | None = Field(
        None,
        description="where the App's repositories are served (https://HOST); default: https://github.com for "
        "GitHub's API, else the api_url's server",
    )


class GitHubAppOut(BaseModel):
    id: str
    app_id: int
    api_url: str
    git_url: str = Field(description="where the App's repositories are served")
    has_webhook_secret: bool
    created_at: datetime


class GitHubAppList(BaseModel):
    apps: list[GitHubAppOut]


class RepoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$", description="owner/name on GitHub"
    )
    ref: str | None = Field(
        None, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", description="branch, tag or commit"
    )
    installation_id: int | None = Field(None, gt=0, description="default: the App's installation on the repository")
    app: str | None = Field(None, pattern=r"^gh-[0-9a-f]{16}$", description="registered App; default: your only one")

    def to_checkout(self) -> Checkout:
        return Checkout(self.repository, self.ref, self.installation_id, self.app)


class CheckoutOut(BaseModel):
    """The repository checked out into a workspace when it was made, and where."""

    repository: str = Field(description="owner/name on GitHub")
    ref: str | None = Field(default=None, description="the branch, tag or commit asked for; null: the default branch")
    app: str | None = Field(default=None, description="the registered GitHub App it was fetched with")
    installation_id: int | None = None
    path: str = Field(description="where it is in the workspace")


class PushOut(BaseModel):
    repository: str
    branch: str
    commit: str
