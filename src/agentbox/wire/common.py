"""What the bodies of every resource share: the annotated types that check a request's fields (absolute
paths, seconds, environments, labels, sizes, command lines) and the body of every error.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from agentbox.wire.sizes import SizeError, format_size, parse_size

MIN_MEMORY = parse_size("64M")
MIN_DISK = parse_size("64M")
#: The largest size a request may name (1 PiB): beyond any machine, and well inside the 64-bit
#: integers that the engine and the database hold sizes in (a bigger one was a 500).
MAX_SIZE = 1 << 50


def _env_key(key: str) -> str:
    if not key or not (key[0].isalpha() or key[0] == "_") or not all(c.isalnum() or c == "_" for c in key):
        raise ValueError(f"environment variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if not key.isascii():
        raise ValueError(f"environment variable name {key!r} must be ASCII")
    return key


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _absolute_path(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path: start it with /")
    return value


#: The longest time a request may name (a timeout, a lifetime): a week.
MAX_SECONDS = 7 * 86400
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
#: The shortest idle timeout: long enough that a call in flight is always seen (workspaces/activity.py).
MIN_IDLE_SECONDS = 2.0


def _idle_timeout(value: float) -> float:
    if 0 < value < MIN_IDLE_SECONDS:
        raise ValueError(f"must be 0 (never suspended) or at least {MIN_IDLE_SECONDS:g} seconds")
    return value


#: Seconds unused after which a workspace is suspended (its sandbox frozen until its next use); 0: never.
IdleTimeout = Annotated[float, Field(ge=0, le=MAX_SECONDS), AfterValidator(_idle_timeout)]
EnvKey = Annotated[str, Field(max_length=256), AfterValidator(_env_key)]
EnvValue = Annotated[str, Field(max_length=65536), AfterValidator(_no_nul)]
Env = Annotated[dict[EnvKey, EnvValue], Field(max_length=256)]
LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
#: E2B's metadata keys (stored as labels) may also hold `_` ("sandbox_test_id").
MetadataKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, Field(max_length=256), AfterValidator(_no_nul)]
AbsolutePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_absolute_path)]
#: Text that a C string will carry (a pattern, a glob): no NUL in it.
NoNul = Annotated[str, AfterValidator(_no_nul)]
#: A shell command (run by /bin/sh -c) or an argv list (run as is).
CommandLine = (
    Annotated[str, Field(min_length=1, max_length=1 << 20), AfterValidator(_no_nul)]
    | Annotated[
        list[Annotated[str, Field(max_length=1 << 20), AfterValidator(_no_nul)]], Field(min_length=1, max_length=4096)
    ]
)


def argv_of(command: str | list[str]) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def _size_at_least(minimum: int) -> BeforeValidator:
    def validate(value: object) -> int:
        try:
            size = parse_size(value)  # type: ignore[arg-type]
        except SizeError as exc:
            raise ValueError(str(exc)) from None
        if size < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}")
        if size > MAX_SIZE:
            raise ValueError(f"must be at most {format_size(MAX_SIZE)}")
        return size

    return BeforeValidator(validate)


_SIZE_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
            {"type": "string", "pattern": r"^\d+(\.\d+)?[kmgtKMGT]?(i?[bB])?$"},
        ],
        "description": 'bytes, or a size such as "512M" or "4G" (binary units, as Docker)',
    }
)
Memory = Annotated[int, _size_at_least(MIN_MEMORY), _SIZE_SCHEMA]
Disk = Annotated[int, _size_at_least(MIN_DISK), _SIZE_SCHEMA]


class FieldError(BaseModel):
    """One bad field of a request (a 422)."""

    # Other keys are kept, not dropped, so that a client sees all a server sent (tests check that a
    # bad value is never echoed back).
    model_config = ConfigDict(extra="allow")

    type: str = Field(description='what kind of problem, e.g. "missing", "string_too_long"')
    loc: list[str | int] = Field(description='where: "body", "query", "path" or "header", then the field\'s path')
    msg: str = Field(description="what is wrong with it")


class ErrorOut(BaseModel):
    """The body of every error the API answers (4xx and 5xx)."""

    detail: str | list[FieldError] = Field(
        description="what went wrong and what to do about it; for a request that does not validate (422), "
        "each bad field"
    )
