"""What envd's Connect services share: agentbox's errors as Connect codes, blocking provider calls
and iterators run off the event loop, and oneof values."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

import anyio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from agentbox.errors import AgentboxError
from agentbox.web.dependencies import in_thread

T = TypeVar("T")
_DONE = object()


def connect_error(exc: AgentboxError) -> ConnectError:
    """An agentbox error as the Connect code the SDK maps to the matching exception."""
    code = {
        400: Code.INVALID_ARGUMENT,
        401: Code.UNAUTHENTICATED,
        403: Code.PERMISSION_DENIED,
        404: Code.NOT_FOUND,
        409: Code.FAILED_PRECONDITION,
        413: Code.RESOURCE_EXHAUSTED,
        422: Code.INVALID_ARGUMENT,
        429: Code.RESOURCE_EXHAUSTED,
        507: Code.RESOURCE_EXHAUSTED,
        # The sandbox went away or cannot be reached: the SDK then asks /health what happened.
        410: Code.UNAVAILABLE,
        502: Code.UNAVAILABLE,
        503: Code.UNAVAILABLE,
    }.get(exc.status_code, Code.INTERNAL)
    return ConnectError(code, exc.detail)


async def call(function: Callable[..., T], *args: Any) -> T:
    """A blocking provider call in a worker thread, its errors as Connect's."""
    try:
        return await in_thread(function, *args)
    except AgentboxError as exc:
        raise connect_error(exc) from None


async def drain(events: Iterator[T]) -> AsyncGenerator[T, None]:
    """A blocking iterator's items, pulled in worker threads; closed however the caller stops.

    A pull under way is never abandoned: a generator cannot be closed while it runs, so the close
    waits for it (provider iterators hand up a None every few seconds at most)."""
    pull: asyncio.Future[Any] | None = None
    try:
        while True:
            pull = asyncio.ensure_future(call(next, events, _DONE))
            item = await asyncio.shield(pull)
            pull = None
            if item is _DONE:
                return
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            if pull is not None:
                with contextlib.suppress(BaseException):
                    await pull
            close = getattr(events, "close", None)
            if close is not None:
                await in_thread(close)


def one_of(field: str, value: Any) -> Any:
    """A oneof's value. (protobuf-py types each by its field's name as a literal, which a name chosen at run
    time cannot be; the message checks the name when it is built.)"""
    return Oneof(field, value)
