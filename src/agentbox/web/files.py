"""File answers and bodies shared by the faces: a file's bytes out (whole when small, streamed
otherwise), a request body spooled to a bounded temporary file, and an async body handed to a
worker thread as plain chunks.
"""

import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import IO

import anyio.from_thread
from fastapi import Response

from agentbox.errors import PayloadTooLarge
from agentbox.web.dependencies import in_thread
from agentbox.web.streaming import ClosingStreamingResponse

#: Files up to this size go through the server in one piece rather than streamed.
IN_ONE_PIECE = 8 << 20


async def file_answer(size: int, body: Iterator[bytes], headers: dict[str, str]) -> Response:
    """A file's bytes: whole when small (each piece handed from a worker thread costs a switch), else
    streamed and closed however the answer ends."""
    if size <= IN_ONE_PIECE:  # its length as read: a provider's stat may not match (/proc, a rewrite)
        return Response(await in_thread(b"".join, body), media_type="application/octet-stream", headers=headers)
    headers = {"Content-Length": str(size), **headers}
    return ClosingStreamingResponse(body, media_type="application/octet-stream", headers=headers)


async def spooled(chunks: AsyncIterator[bytes], limit: int, gunzip: bool = False) -> tuple[IO[bytes], int]:
    """A request body in a temporary file (in memory up to 8 MiB), at its start, and its size.

    PayloadTooLarge past `limit` bytes (after decompressing, with `gunzip`); zlib.error for a body
    that is not whole gzip."""
    spool = tempfile.SpooledTemporaryFile(max_size=IN_ONE_PIECE)  # noqa: SIM115 (the caller closes it)
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gunzip else None
    size = 0
    try:
        async for chunk in chunks:
            data = inflate.decompress(chunk) if inflate is not None else chunk
            size += len(data)
            if size > limit:
                raise PayloadTooLarge(f"the upload exceeds the limit (WORKSPACE_MAX_UPLOAD) of {limit} bytes")
            spool.write(data)
        if inflate is not None and not inflate.eof:
            raise zlib.error("the compressed body ended early")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, size


def sync_chunks(stream: AsyncIterator[bytes], limit: int) -> Iterator[bytes]:
    """The request body, pulled from the event loop by a worker thread, at most `limit` bytes."""

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    total = 0
    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the upload exceeds the limit (WORKSPACE_MAX_UPLOAD) of {limit} bytes")
        if chunk:
            yield chunk
