"""E2B's Secrets API (what the SDK's `Secret.create`, `list`, `get_info`, `exists`, `update` and
`destroy` call), served from agentbox's vault: a secret made here is the owner's vault secret, which the
egress proxy puts into requests where a header rule says `${e2b.secrets.NAME}` (`Secret.fill(NAME)`),
and which /api/v1/secrets lists. Values go in only: no route answers one.

As E2B does, a name is lower-cased when created (its canonical form, which the answer gives), and a
secret is named in a path by its identifier (`sec_...`) or its name. Names also follow the vault's
rule (a letter or `_` first, at most 64 characters), since the proxy's placeholders name them so.
Metadata has E2B's limits (wire/vault.py). Errors are E2B's shape (control.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from agentbox.e2b_api.control import PREFIX, E2BError, Who
from agentbox.errors import AgentboxError
from agentbox.vault import SecretInfo, UnknownSecret, Vault
from agentbox.web.dependencies import in_thread
from agentbox.wire.vault import MAX_VALUE_BYTES, name_problem

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: E2B's page size: its default and its most.
PAGE = 100
#: Names E2B keeps for identifiers.
RESERVED_PREFIX = "sec_"


async def _vault(request: Request) -> Vault:
    found: Vault | None = request.app.state.service.vault
    if found is None:
        # 503, not 404: the SDK reads a 404 as "no such secret" and hides the message.
        raise E2BError(
            503,
            "secrets are not configured on this agentbox server: its operator sets GITHUB_APP_ENCRYPTION_KEY "
            "(32 random bytes, hex or base64) and restarts it",
        )
    return found


Secrets = Annotated[Vault, Depends(_vault)]


class NewSecret(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Bounded in characters here (cheap); the vault's own checks say what is wrong in words.
    name: str = Field(max_length=256)
    value: str = Field(max_length=MAX_VALUE_BYTES)
    metadata: dict[str, str] = Field(default_factory=dict)


class SecretUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    value: str = Field(max_length=MAX_VALUE_BYTES)
    metadata: dict[str, str] | None = None


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """A vault call in a worker thread, its errors as E2B's (a refused field is E2B's 400, not 422)."""
    try:
        return await in_thread(function, *args)
    except UnknownSecret as exc:
        # Its detail says how to set one through /api/v1; E2B's answer names what was asked for.
        raise E2BError(404, f"secret {exc.name[:128]!r} not found") from None
    except AgentboxError as exc:
        raise E2BError(400 if exc.status_code == 422 else exc.status_code, exc.detail) from None


def _shown(info: SecretInfo) -> dict[str, Any]:
    return {
        "secretID": info.id,
        "name": info.name,
        "currentVersion": info.version,
        "metadata": info.metadata,
        "createdAt": info.created_at.astimezone(UTC).isoformat(),
        "updatedAt": info.updated_at.astimezone(UTC).isoformat(),
    }


@router.get("/secrets")
async def list_secrets(
    who: Who,
    vault: Secrets,
    limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE,
    next_token: Annotated[str, Query(alias="nextToken", max_length=128)] = "",
) -> Response:
    # The token: the last name of the page before (names are unique per owner and listed A-Z).
    page, more = await _call(vault.page, who.owner, limit, next_token or None)
    headers = {"x-next-token": page[-1].name} if more and page else {}
    return JSONResponse([_shown(info) for info in page], headers=headers)


@router.post("/secrets", status_code=201)
async def create_secret(body: NewSecret, who: Who, vault: Secrets) -> dict[str, Any]:
    name = body.name.lower()
    problem = name_problem(name)
    if problem is not None:
        raise E2BError(400, f"name {body.name[:80]!r}: {problem}")
    if name.startswith(RESERVED_PREFIX):
        raise E2BError(400, f"name {body.name[:80]!r}: the {RESERVED_PREFIX} prefix is kept for secrets' identifiers")
    info: SecretInfo = await _call(vault.create, who.owner, name, body.value, body.metadata)
    return _shown(info)


@router.get("/secrets/{secret_id}")
async def get_secret(secret_id: str, who: Who, vault: Secrets) -> dict[str, Any]:
    info: SecretInfo = await _call(vault.find, who.owner, secret_id)
    return _shown(info)


@router.post("/secrets/{secret_id}")
async def update_secret(secret_id: str, body: SecretUpdate, who: Who, vault: Secrets) -> dict[str, Any]:
    info: SecretInfo = await _call(vault.update, who.owner, secret_id, body.value, body.metadata)
    return _shown(info)


@router.delete("/secrets/{secret_id}", status_code=204)
async def destroy_secret(secret_id: str, who: Who, vault: Secrets) -> Response:
    await _call(vault.remove, who.owner, secret_id)
    return Response(status_code=204)
