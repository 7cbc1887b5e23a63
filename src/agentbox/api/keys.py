"""API keys: an admin makes, lists and revokes them; anyone sees their own key's record."""

from typing import Annotated

from fastapi import APIRouter, Query, Request

from agentbox.auth.keys import ApiKeys
from agentbox.errors import NotFound
from agentbox.web.dependencies import Admin, Who, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.keys import CreateKey, KeyList, KeyOut, NewKeyOut

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


def _keys(request: Request) -> ApiKeys:
    found: ApiKeys = request.app.state.service.keys
    return found


@router.post(
    "",
    summary="Make an API key",
    status_code=201,
    response_model=NewKeyOut,
    responses=errors((403, "Your key is not an admin's."), 413, 422),
)
async def create_key(body: CreateKey, request: Request, who: Admin) -> NewKeyOut:
    """Make an API key for `owner` and show its secret, this once (only its hash is kept).

    Needs an admin's API key."""
    record, secret = await in_thread(_keys(request).create, body.owner, body.name, body.admin, body.quota())
    return NewKeyOut.model_validate({**KeyOut.model_validate(record).model_dump(), "secret": secret})


@router.get("", summary="List API keys", response_model=KeyList, responses=errors(422))
async def list_keys(
    request: Request,
    who: Who,
    owner: Annotated[str | None, Query(description="only this owner's (admins); others always see their own")] = None,
    include_revoked: bool = False,
) -> KeyList:
    """API keys, oldest first: every owner's for an admin, else the caller's own. Secrets are never listed.

    Needs an API key (an admin's to see other owners' keys)."""
    wanted = owner if who.admin else who.owner
    records = await in_thread(_keys(request).find, wanted, include_revoked)
    return KeyList(keys=[KeyOut.model_validate(record) for record in records])


@router.get("/me", summary="The key of this request", response_model=KeyOut, responses=errors())
async def my_key(request: Request, who: Who) -> KeyOut:
    """The record of the key this request bears (what the dashboard shows: whose, admin or not, quotas).

    Needs an API key."""
    return KeyOut.model_validate(await in_thread(_keys(request).get, who.key_id))


@router.delete(
    "/{key_id}",
    summary="Revoke an API key",
    response_model=KeyOut,
    responses=errors(
        (400, "It is the last admin key that works: make another admin's key first."),
        (404, "No such key (of yours, unless you are an admin)."),
    ),
)
async def revoke_key(key_id: str, request: Request, who: Who) -> KeyOut:
    """Revoke a key: every call with it, and every link, token and connection it made, stops working
    within a second. Returns its record, revoked.

    Needs an API key: an admin's revokes any key, another only its owner's keys."""
    keys = _keys(request)
    record = await in_thread(keys.get, key_id)
    if not who.admin and record.owner != who.owner:
        raise NotFound(f"no API key {key_id!r}: list yours with GET /api/v1/keys")
    return KeyOut.model_validate(await in_thread(keys.revoke, key_id))
