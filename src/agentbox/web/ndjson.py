"""NDJSON streams: the lines of a streamed answer, ended by an error line rather than a broken stream."""

import json
from collections.abc import Iterator

from pydantic import BaseModel

from agentbox.errors import AgentboxError
from agentbox.wire.commands import ErrorEvent


def json_line(event: BaseModel) -> bytes:
    return json.dumps(event.model_dump(mode="json"), ensure_ascii=False).encode() + b"\n"


def guarded_lines(lines: Iterator[bytes], source: Iterator[object]) -> Iterator[bytes]:
    """`lines` (made from `source`); an error of ours becomes an `{"error"}` last line, and `source` is
    closed at the end however it comes (a client that leaves ends the work in the sandbox)."""
    try:
        yield from lines
    except AgentboxError as exc:
        yield json_line(ErrorEvent(error=exc.detail))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
