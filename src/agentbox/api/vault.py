"""Secrets: set (create or replace), list by name, and delete your own. Their values are never answered:
only the egress proxy reads them, to put them into a workspace's requests."""

from typing import Annotated

from fastapi import APIRouter, Path, Response

from agentbox.vault import SecretInfo
from agentbox.web.dependencies import Owner, Secrets, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.vault import MAX_PER_OWNER, MAX_VALUE_BYTES, NAME_PATTERN, SecretList, SecretOut, SetSecret

router = APIRouter(prefix="/api/v1/secrets", tags=["secrets"])

SecretName = Annotated[str, Path(pattern=NAME_PATTERN, description="the secret's name, e.g. OPENAI_API_KEY")]
_UNCONFIGURED = "secrets are not configured on this server (GITHUB_APP_ENCRYPTION_KEY)"


def secret_out(info: SecretInfo) -> SecretOut:
    return SecretOut(name=info.name, created_at=info.created_at, updated_at=info.updated_at)


@router.put(
    "/{name}",
    summary="Set a secret",
    response_model=SecretOut,
    response_description="The secret's value was replaced.",
    responses=errors(
        (404, f"{_UNCONFIGURED.capitalize()}."),
        (409, f"You hold {MAX_PER_OWNER} secrets already: delete one first."),
        (413, "The request body is too large (WORKSPACE_MAX_REQUEST)."),
        (422, f"A malformed name, or a value that is empty or over {MAX_VALUE_BYTES} bytes of UTF-8."),
    )
    | {201: {"model": SecretOut, "description": "The secret was created."}},
)
async def set_secret(name: SecretName, body: SetSecret, response: Response, who: Owner, vault: Secrets) -> SecretOut:
    """Store a secret's value under `name`, sealed: 201 when it is new, 200 when it replaces one.

    Returns its name and times, never its value, which only the egress proxy reads (to put it into
    a workspace's requests; the sandbox never holds it). At most 100 per owner.

    Needs an API key; the secret is its owner's (an admin's key too: no owner reaches another's).
    """
    info, created = await in_thread(vault.put, who, name, body.value)
    response.status_code = 201 if created else 200
    return secret_out(info)


@router.get(
    "",
    summary="List your secrets",
    response_model=SecretList,
    responses=errors((404, f"{_UNCONFIGURED.capitalize()}.")),
)
async def list_secrets(who: Owner, vault: Secrets) -> SecretList:
    """List your secrets by name (A-Z) with when each was made and last set; never their values.

    Needs an API key: only its owner's secrets are listed.
    """
    return SecretList(secrets=[secret_out(info) for info in await in_thread(vault.list, who)])


@router.delete(
    "/{name}",
    summary="Delete a secret",
    status_code=204,
    responses=errors((404, f"No secret of yours with this name, or {_UNCONFIGURED}."), 422),
)
async def delete_secret(name: SecretName, who: Owner, vault: Secrets) -> Response:
    """Delete one of your secrets and its value (204, no body); from then on, no request gets it.

    Needs an API key: the secret's owner's.
    """
    await in_thread(vault.delete, who, name)
    return Response(status_code=204)
