"""The search tools agents call (find files by glob, search text by regex), as commands and their parsing.

Both run inside the workspace, over any provider's exec, and stay bounded: in results, in bytes
and in time. A search that reaches a bound stops there and says so (`truncated`), so an agent
asking `**/*` of a tree with a million files gets the newest part of the answer quickly rather
than a timeout.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from agentbox.errors import BadRequest, NotFound, Unprocessable
from agentbox.sandbox.runtime import ExecEvent, ExecResult, Exit, close_stream

#: Seconds a search may run; what it found by then is the answer, marked truncated.
SEARCH_SECONDS = 20.0
#: Bytes of a search command's output read at most (file lists, grep's lines).
SEARCH_OUTPUT = 8 << 20
#: Characters of a matching line given back; longer lines (minified code) are cut.
MAX_LINE = 500
#: Characters of all of grep's lines together.
MAX_GREP_TEXT = 1 << 20

_MISSING = "No such file or directory"


# Glob


@dataclass(frozen=True)
class GlobResult:
    paths: list[str]  # newest first
    truncated: bool


def glob_command(pattern: str, root: str) -> list[str]:
    """find(1) listing files (and links) under `root` that may match: a superset, narrowed by `globbed`.

    find's -path lets `*` cross `/`, so `**/`, `**` and `*` all become `*` there, and braces too;
    the exact glob is applied to what comes back. Every file's mtime comes with it, to sort by.
    """
    loose = re.sub(r"\{[^{}]*\}", "*", pattern).replace("**/", "*").replace("**", "*")
    return [
        "find",
        root,
        "-mindepth",
        "1",
        "-path",
        f"{root.rstrip('/')}/{loose}",
        "(",
        "-type",
        "f",
        "-o",
        "-type",
        "l",
        ")",
        "-printf",
        r"%T@\t%p\0",
    ]


def globbed(pattern: str, root: str, result: ExecResult, limit: int) -> GlobResult:
    """The paths of `glob_command`'s output that match `pattern` exactly, newest first, at most `limit`."""
    if not result.stdout and _MISSING in result.stderr:
        raise NotFound(f"{root}: no such directory in the workspace: check the path (absolute, e.g. /workspace)")
    matches = compile_glob(pattern)
    prefix = root.rstrip("/") + "/"
    found: list[tuple[float, str]] = []
    for record in result.stdout.split("\0"):
        mtime, _, path = record.partition("\t")
        if path.startswith(prefix) and any(m.fullmatch(path[len(prefix) :]) for m in matches):
            found.append((float(mtime), path))
    found.sort(key=lambda item: (-item[0], item[1]))
    truncated = len(found) > limit or result.stdout_truncated or result.timed_out
    return GlobResult([path for _, path in found[:limit]], truncated)


def compile_glob(pattern: str) -> list[re.Pattern[str]]:
    """A glob as regular expressions over paths relative to its root, one per brace alternative.

    `*` and `?` stay within one directory, `**` crosses any number (`**/` also none), `[...]`
    is a class (`[!...]` negated) and `{a,b}` alternatives; hidden files match like any other.
    """
    return [re.compile(_translate(expanded)) for expanded in _braces(pattern)]


def _braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for option in match.group(1).split(",") for expanded in _braces(head + option + tail)]


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        end = pattern.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end != -1:
            members = pattern[i + 1 : end]
            negated = members.startswith("!")
            members = re.sub(r"([\\^\[])", r"\\\1", members[1:] if negated else members)
            out.append(f"[{'^' if negated else ''}{members}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


# Grep


@dataclass(frozen=True)
class GrepQuery:
    pattern: str
    path: str
    include: str | None = None
    context: int = 0
    ignore_case: bool = False
    limit: int = 200


@dataclass(frozen=True)
class GrepLine:
    path: str
    line_number: int
    line: str
    is_match: bool  # false: a context line around a match


@dataclass
class GrepResult:
    matches: list[GrepLine] = field(default_factory=list)
    truncated: bool = False
    engine: Literal["rg", "grep"] = "rg"  # which one ran


Engine = Literal["rg", "grep"]
#: Tried in this order: ripgrep (it skips what .gitignore and hidden names hide, and binary files),
#: then GNU grep -P for images without it.
ENGINES: tuple[Engine, ...] = ("rg", "grep")
#: How the helper ends a command whose program is not in the image.
_NOT_INSTALLED = 127


def grep(query: GrepQuery, run: Callable[[list[str]], Iterator[ExecEvent]]) -> GrepResult:
    """Search with the first engine the workspace has; `run` starts a command there.

    NotFound for a path that does not exist, Unprocessable for a pattern the engine refuses,
    BadRequest when the image has neither engine.
    """
    for engine in ENGINES:
        events = run(grep_command(query, engine))
        try:
            found = grepped(query, events, engine)
        finally:
            close_stream(events)  # stops a search cut short
        if found is not None:
            return found
    raise BadRequest("grep needs ripgrep or GNU grep in the workspace's image: install one (apt-get install ripgrep)")


def grep_command(query: GrepQuery, engine: Engine) -> list[str]:
    if engine == "rg":
        argv = ["rg", "--json", "--no-config", "--max-filesize", "16M"]
        include = ["-g", query.include] if query.include else []
    else:
        argv = ["grep", "-rnIZP"]
        include = [f"--include={query.include}"] if query.include else []
    if query.ignore_case:
        argv.append("-i")
    if query.context:
        argv += ["-C", str(query.context)]
    return [*argv, *include, "-e", query.pattern, "--", query.path]


def grepped(query: GrepQuery, events: Iterable[ExecEvent], engine: Engine) -> GrepResult | None:
    """`grep_command`'s output as lines, read until the search ends or reaches a bound (then truncated);
    None when `engine` is not in the workspace's image.

    NotFound for a path that does not exist; Unprocessable for a pattern the engine refuses.
    """
    result = GrepResult(engine=engine)
    parse = _rg_line if engine == "rg" else _grep_line
    pending = b""
    stderr = b""
    matched = text = 0
    for event in events:
        if isinstance(event, Exit):
            if event.timed_out:
                result.truncated = True
            elif event.exit_code == _NOT_INSTALLED and not result.matches:
                return None
            elif event.exit_code >= 2 and not result.matches:
                _refuse_when_unusable(query, stderr.decode("utf-8", "replace"))
            return result
        if event.stream == "stderr":
            stderr = (stderr + event.data)[-4096:]
            continue
        pending += event.data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            found = parse(line)
            if found is None:
                continue
            matched += found.is_match
            text += len(found.line)
            if matched > query.limit or text > MAX_GREP_TEXT:
                result.truncated = True
                return result
            result.matches.append(found)
    return result


def _refuse_when_unusable(query: GrepQuery, stderr: str) -> None:
    """A missing path and a bad pattern are the caller's to fix; unreadable files found on the way are
    not (the search goes on without them, as grep's own does)."""
    if f"{query.path}: {_MISSING}" in stderr:
        raise NotFound(f"{query.path}: no such file or directory in the workspace: check the path (absolute)")
    problems = [line.strip() for line in stderr.splitlines() if line.strip() and "Permission denied" not in line]
    if problems:
        raise Unprocessable(f"the search failed, check the pattern: {' '.join(problems[-6:])}")


def _rg_line(line: bytes) -> GrepLine | None:
    message = json.loads(line)
    if message.get("type") not in ("match", "context"):
        return None
    data = message["data"]
    return GrepLine(
        path=_rg_text(data["path"]),
        line_number=data.get("line_number") or 0,
        line=_cut(_rg_text(data["lines"])),
        is_match=message["type"] == "match",
    )


def _rg_text(value: dict[str, str]) -> str:
    if "text" in value:
        return value["text"]
    return base64.b64decode(value["bytes"]).decode("utf-8", "replace")


def _grep_line(line: bytes) -> GrepLine | None:
    path, nul, rest = line.partition(b"\0")
    found = re.match(rb"(\d+)([:-])", rest)
    if not nul or found is None:
        return None  # a "--" between groups of context
    return GrepLine(
        path=path.decode("utf-8", "replace"),
        line_number=int(found.group(1)),
        line=_cut(rest[found.end() :].decode("utf-8", "replace")),
        is_match=found.group(2) == b":",
    )


def _cut(line: str) -> str:
    line = line.rstrip("\r\n")
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + "…"
