"""How the HTTP API's answers become MCP tool results: the API's JSON as structured content, with text to read.

A shape takes the route's successful answer and the tool's validated arguments. Any shape may
raise ValueError (pydantic's ValidationError is one) for an answer that is not what agentbox
answers; the caller turns that into a tool error. Errors of the API become tool errors whose
text is the API's `detail`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import httpx
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from agentbox.wire.commands import ExecOut
from agentbox.wire.files import WriteResult
from agentbox.wire.processes import (
    OutputDroppedEvent,
    ProcessExitEvent,
    ProcessOut,
    ProcessOutputEvent,
    SessionRunOut,
    process_event,
)
from agentbox.wire.tools import EditToolOut, GlobToolOut, GrepToolOut, ReadToolOut

Model = TypeVar("Model", bound=BaseModel)
#: A successful answer of the route, and the tool's validated arguments, as the tool's result.
Shape = Callable[[httpx.Response, Any], CallToolResult]


def result(structured: dict[str, Any] | None, text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], structured_content=structured)


def failure(text: str) -> CallToolResult:
    """A tool error (`isError`): the agent reads `text` and may correct itself."""
    return CallToolResult(content=[TextContent(text=text)], is_error=True)


def refusal(response: httpx.Response) -> CallToolResult:
    """An error answer of the API as a tool error: its `detail`, or its body when it has none (a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return failure(readable(body["detail"]))
    text = response.text.strip() or response.reason_phrase
    return failure(f"HTTP {response.status_code}: {text}")


def readable(detail: Any) -> str:
    """An API error's detail as text: a string as it is; a 422's list of validation errors as one
    `field: message` line each, the field named as the tool's argument."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(problem, Mapping) for problem in detail):
        # The API says where each field was (body, query, path); to the agent each is an argument.
        return invalid({**problem, "loc": list(problem.get("loc", []))[1:]} for problem in detail)
    return json.dumps(detail, ensure_ascii=False)


def invalid(problems: Iterable[Mapping[str, Any]]) -> str:
    """Validation errors (pydantic's) as one `field: message` line each."""
    lines = []
    for problem in problems:
        where = ".".join(str(part) for part in problem.get("loc", ()))
        message = str(problem.get("msg", "invalid"))
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)


def as_json(response: httpx.Response, _arguments: Any) -> CallToolResult:
    """The answer's JSON, as structured content and as indented text."""
    answer = response.json()
    if not isinstance(answer, dict):
        raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
    return result(answer, json.dumps(answer, indent=2, ensure_ascii=False))


def _validated(model: type[Model], response: httpx.Response) -> tuple[Model, dict[str, Any]]:
    """The answer as `model` (so a shape reads typed fields), and as the JSON the API sent."""
    return model.model_validate_json(response.content), response.json()


def done(message: str) -> Shape:
    """For routes that answer 204: `message`, formatted with the tool's arguments, and no structured content."""

    def shape(_response: httpx.Response, arguments: BaseModel) -> CallToolResult:
        return result(None, message.format(**arguments.model_dump()))

    return shape


def exec_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    """How the command ended, then its stdout and its stderr."""
    out, answer = _validated(ExecOut, response)
    ended = f"exit code {out.exit_code}"
    if out.timed_out:
        ended += " (timed out: killed after its timeout)"
    elif out.signal:
        ended += f" (killed by {out.signal})"
    return result(answer, _outputs(ended, out))


def session_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    """As `exec_answer`, for a command run in a shell session."""
    out, answer = _validated(SessionRunOut, response)
    ended = f"exit code {out.exit_code}"
    if out.timed_out:
        ended += " (timed out: interrupted; the session goes on)"
    if out.session_ended:
        ended += " (the session has ended: open a new one)"
    return result(answer, _outputs(ended, out))


def _outputs(ended: str, out: ExecOut | SessionRunOut) -> str:
    parts = [ended]
    for name, text, cut in (("stdout", out.stdout, out.stdout_truncated), ("stderr", out.stderr, out.stderr_truncated)):
        if text or cut:
            label = f"{name} (truncated)" if cut else name
            parts.append(f"--- {label} ---\n" + text.removesuffix("\n"))
    return "\n".join(parts)


def glob_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    out, answer = _validated(GlobToolOut, response)
    text = "\n".join(out.paths) if out.paths else "no file matches"
    if out.truncated:
        text += "\n(more matched: narrow the pattern or raise limit)"
    return result(answer, text)


def grep_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    """ripgrep's own layout: `path:line:text` for a match, `path-line-text` for context."""
    out, answer = _validated(GrepToolOut, response)
    lines = []
    for match in out.matches:
        mark = ":" if match.is_match else "-"
        lines.append(f"{match.path}{mark}{match.line_number}{mark}{match.line}")
    text = "\n".join(lines) if lines else "no match"
    if out.truncated:
        text += "\n(stopped at a bound: narrow the search)"
    return result(answer, text)


def read_answer(response: httpx.Response, arguments: Any) -> CallToolResult:
    """The numbered lines (or a directory's entries), and where to read on when there are more."""
    out, answer = _validated(ReadToolOut, response)
    if out.is_binary:
        return result(answer, f"{out.path} is a binary file ({out.size} bytes): its content is not shown")
    if out.is_directory:
        return result(answer, out.content or f"{out.path} is an empty directory")
    if out.total_lines == 0:
        return result(answer, f"{out.path} is empty")
    offset, limit = arguments.offset, arguments.limit
    last = min(out.total_lines, offset + limit - 1)
    if last < offset:
        return result(answer, f"{out.path} has {out.total_lines} lines: none from line {offset}")
    text = out.content
    if last < out.total_lines:
        text += f"(lines {offset}-{last} of {out.total_lines}: read on with offset={last + 1})\n"
    return result(answer, text)


def write_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    out, answer = _validated(WriteResult, response)
    return result(answer, f"wrote {out.size} bytes to {out.path}")


def edit_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    out, answer = _validated(EditToolOut, response)
    times = "once" if out.replacements == 1 else f"{out.replacements} times"
    return result(answer, f"replaced {times} in {out.path}")


def process_answer(response: httpx.Response, _arguments: Any) -> CallToolResult:
    out, answer = _validated(ProcessOut, response)
    return result(answer, f"started process {out.pid} (read its output with process_output, pid={out.pid})")


def output_answer(response: httpx.Response, arguments: Any) -> CallToolResult:
    """The output's text so far, then whether the process has ended and where to read on.

    Structured: `{"lines": [the API's NDJSON lines], "next_offset", "exit": its exit line or null}`.
    An `{"error"}` line (the workspace went away mid-answer) is a tool error.
    """
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    text, next_offset, ended = [], arguments.offset, None
    for event in map(process_event, lines):
        if isinstance(event, ProcessOutputEvent):
            text.append(event.data)
            next_offset = event.next_offset
        elif isinstance(event, OutputDroppedEvent):
            text.append(f"[output up to byte {event.resumed_at} is no longer kept]\n")
            next_offset = max(next_offset, event.resumed_at)
        elif isinstance(event, ProcessExitEvent):
            ended = event
        else:
            return failure(event.error)
    output = "".join(text)
    if output and not output.endswith("\n"):
        output += "\n"
    if ended is None:
        output += f"[still running: call again with offset={next_offset} for what comes next]"
    elif ended.exit_code is not None:
        output += f"[exited with exit code {ended.exit_code}]"
    else:
        output += f"[ended by {ended.signal or 'an unknown cause'}]"
    exit_line = ended.model_dump(mode="json") if ended else None
    return result({"lines": lines, "next_offset": next_offset, "exit": exit_line}, output)
