"""The bodies of API keys (routes: api/keys.py): a key to make and its quotas, a key's record, and the
secret shown once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentbox.wire.common import Memory
from agentbox.wire.domain import Quota
from agentbox.wire.sizes import format_size

OwnerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", description="whose the key is")]


class CreateKey(BaseModel):
    """An API key to make (admins only). Quotas limit the owner's active workspaces while this key asks."""

    model_config = ConfigDict(extra="forbid")

    owner: OwnerName
    name: str = Field(min_length=1, max_length=128, description="what it is for, e.g. 'ci' or 'alice laptop'")
    admin: bool = Field(default=False, description="may manage API keys")
    max_workspaces: int | None = Field(default=None, ge=1, le=100_000)
    max_cpus: float | None = Field(default=None, gt=0, le=100_000)
    max_memory: Memory | None = Field(default=None, description='bytes, or a size such as "8G"')

    def quota(self) -> Quota:
        return Quota(self.max_workspaces, self.max_cpus, self.max_memory)


class KeyOut(BaseModel):
    """An API key's record; its secret is never shown again after it was made."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str
    name: str
    admin: bool
    source: Literal["env", "api"] = Field(description="env: from WORKSPACE_API_KEYS; api: made through the API")
    max_workspaces: int | None
    max_cpus: float | None
    max_memory: str | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="its last use (to the minute)")
    revoked_at: datetime | None

    @field_validator("max_memory", mode="before")
    @classmethod
    def _readable_size(cls, value: int | str | None) -> str | None:
        return format_size(value) if isinstance(value, int) else value


class NewKeyOut(KeyOut):
    secret: str = Field(description="the key itself: shown this once, keep it (only its hash is stored)")


class KeyList(BaseModel):
    keys: list[KeyOut]
