"""The bodies of secrets (routes: api/vault.py): a value to store under a name, and a secret as listed
(its name and times, never its value). The rules on names and values are here, where the API's
validation and the vault's own checks (vault/service.py) both read them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agentbox.egress.rules import SECRET_NAME_PATTERN

#: A secret's name: what a header rule's placeholder names it by (`${e2b.secrets.NAME}`), so one rule for
#: both, egress/rules.py's (the lower package): a letter or "_", then letters, digits, "_" or "-".
NAME_PATTERN = SECRET_NAME_PATTERN
#: The largest value, in bytes of UTF-8.
MAX_VALUE_BYTES = 16384
#: Secrets one owner may hold.
MAX_PER_OWNER = 100
#: A secret's metadata (E2B's limits, which its SDK documents): entries, a key's and a value's bytes of
#: UTF-8, and all keys and values together.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 1024
MAX_METADATA_BYTES = 8192

_NAME = re.compile(NAME_PATTERN)


def name_problem(name: str) -> str | None:
    """What is wrong with `name` as a secret's name, or None."""
    if _NAME.fullmatch(name) is None:
        return (
            "must be a letter or _, then letters, digits, _ or - (at most 64 in all), e.g. OPENAI_API_KEY or "
            "openai-api-key"
        )
    return None


def value_problem(value: str) -> str | None:
    """What is wrong with `value` as a secret's value, or None (never the value itself)."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \\ud800 escapes can carry
        return "must be text that UTF-8 can encode (it holds a lone surrogate)"
    if size == 0:
        return "must not be empty"
    if size > MAX_VALUE_BYTES:
        return f"is {size} bytes of UTF-8; the limit is {MAX_VALUE_BYTES}"
    return None


def _utf8(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def metadata_problem(metadata: dict[str, str]) -> str | None:
    """What is wrong with `metadata` as a secret's metadata, or None; the problem names the entry (by key,
    never by value) and the limit it is over."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        return f"has {len(metadata)} entries; the limit is {MAX_METADATA_ENTRIES}"
    total = 0
    for key, value in metadata.items():
        key_size, value_size = _utf8(key), _utf8(value)
        if key_size is None or value_size is None:
            return f"entry {key[:40]!r}: must be text that UTF-8 can encode (it holds a lone surrogate)"
        if key_size == 0:
            return "a key is empty: every key needs at least one character"
        if key_size > MAX_METADATA_KEY_BYTES:
            return f"key {key[:40]!r}...: is {key_size} bytes of UTF-8; the limit is {MAX_METADATA_KEY_BYTES}"
        if value_size > MAX_METADATA_VALUE_BYTES:
            return f"the value of {key!r} is {value_size} bytes of UTF-8; the limit is {MAX_METADATA_VALUE_BYTES}"
        total += key_size + value_size
    if total > MAX_METADATA_BYTES:
        return f"is {total} bytes of UTF-8 in all (keys and values); the limit is {MAX_METADATA_BYTES}"
    return None


def _value(value: str) -> str:
    problem = value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class SetSecret(BaseModel):
    """A secret's value, to store (sealed) under the name in the path."""

    model_config = ConfigDict(extra="forbid")

    value: Annotated[
        str,
        # Characters first (cheap, and bounds the work), then bytes of UTF-8 in the validator.
        Field(
            min_length=1,
            max_length=MAX_VALUE_BYTES,
            description=f"the secret itself: 1 to {MAX_VALUE_BYTES} bytes of UTF-8 text; never shown again",
        ),
        AfterValidator(_value),
    ]


class SecretOut(BaseModel):
    """A stored secret: its name and times. Its value is never answered."""

    name: str
    created_at: datetime
    updated_at: datetime = Field(description="when its value was last set")


class SecretList(BaseModel):
    secrets: list[SecretOut]
