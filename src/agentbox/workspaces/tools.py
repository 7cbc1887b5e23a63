"""The file tools agents call (read with line numbers, write, replace one exact string), as pure logic.

The manager fetches and stores the bytes through any provider; what is here decides what the
agent sees: numbered lines, a binary file said to be one rather than dumped, an edit that
refuses to guess which of several matches was meant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agentbox.errors import PayloadTooLarge, Unprocessable
from agentbox.sandbox.runtime import DirEntry, FileStat, close_stream

#: Lines a read gives when it names no limit.
DEFAULT_LINES = 2000
#: Bytes looked at to tell a binary file from text.
SNIFF_BYTES = 8192
#: The largest file the tools read or edit (they hold it whole).
MAX_TOOL_FILE = 16 << 20


@dataclass(frozen=True)
class ReadResult:
    content: str  # numbered lines ("     1\tfirst line"), or a directory's listing
    total_lines: int
    size: int
    is_binary: bool
    is_directory: bool


def whole(path: str, stat: FileStat, chunks: Iterator[bytes]) -> bytes:
    """A file's bytes, held whole; PayloadTooLarge (its call closed) past MAX_TOOL_FILE."""
    if stat.size > MAX_TOOL_FILE:
        close_stream(chunks)
        raise PayloadTooLarge(
            f"{path} is {stat.size} bytes; the file tools take files up to {MAX_TOOL_FILE}: "
            "use GET /files for bigger ones"
        )
    return b"".join(chunks)


def is_binary(data: bytes) -> bool:
    """A NUL in its start, or bytes that are not UTF-8: not text an agent can read."""
    head = data[:SNIFF_BYTES]
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 3  # a character cut at the sniff's end is still text
    return False


def numbered(data: bytes, offset: int = 1, limit: int = DEFAULT_LINES) -> ReadResult:
    """Lines `offset` (1-based) to `offset + limit - 1` of a file, each with its number."""
    if is_binary(data):
        return ReadResult("", 0, len(data), is_binary=True, is_directory=False)
    lines = data.decode("utf-8", "replace").splitlines()
    chosen = lines[offset - 1 : offset - 1 + limit]
    content = "".join(f"{number:>6}\t{line}\n" for number, line in enumerate(chosen, start=offset))
    return ReadResult(content, len(lines), len(data), is_binary=False, is_directory=False)


def listing(entries: list[DirEntry]) -> ReadResult:
    """A directory as lines of names (directories end with /), sorted."""
    names = sorted(f"{e.name}/" if e.type == "dir" else e.name for e in entries)
    return ReadResult("".join(f"{name}\n" for name in names), len(names), 0, is_binary=False, is_directory=True)


def replaced(text: str, old: str, new: str, replace_all: bool) -> tuple[str, int]:
    """`text` with `old` replaced by `new`, and how many times. Unprocessable when `old` is not
    there, or is there more than once and `replace_all` was not asked for."""
    count = text.count(old)
    if count == 0:
        raise Unprocessable("old_string was not found in the file: read it again and copy the text exactly")
    if count > 1 and not replace_all:
        raise Unprocessable(
            f"old_string is in the file {count} times: add surrounding lines to make it unique, "
            "or set replace_all to change every one"
        )
    return text.replace(old, new), count
