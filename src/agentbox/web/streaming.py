"""Streamed answers from the provider's (blocking) iterators, closed however the answer ends."""

import inspect
from collections.abc import Iterator

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from agentbox.errors import AgentboxError


class CutShort(Exception):
    """Raised by a ClosingStreamingResponse's content that ended before its answer did (a proxied server
    gone mid-answer): the answer is left incomplete, so that the client sees it broken, not whole."""


class ClosingStreamingResponse(StreamingResponse):
    """A `StreamingResponse` over a sync iterator that is closed when the answer ends, by any way.

    When a client leaves, Starlette stops pulling the iterator but leaves closing it to the garbage
    collector, which may never come: a watch or a follower then kept running in the sandbox. Closing
    it ends the work there (the helper's call, an E2B watcher). Starlette waits for a pull under way
    to return first, so the iterator is never closed while it runs.
    """

    def __init__(
        self,
        content: Iterator[bytes],
        media_type: str | None = None,
        headers: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        super().__init__(content, status_code=status_code, media_type=media_type, headers=headers)
        self._source = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (CutShort, AgentboxError):
            pass  # without its last message the server ends the connection: the client's read fails
        finally:
            close = getattr(self._source, "close", None)
            finished = (
                inspect.isgenerator(self._source) and inspect.getgeneratorstate(self._source) == inspect.GEN_CLOSED
            )
            if close is not None and not finished:  # a finished one costs no thread hop
                with anyio.CancelScope(shield=True):  # it may block (an E2B watcher is removed over HTTP)
                    await anyio.to_thread.run_sync(close)
