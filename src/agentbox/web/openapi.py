"""The OpenAPI document (/openapi.json, /docs): what every route answers, errors included, and what it leaves out.

A route lists its error answers with `errors(...)`: each has the `{"detail": ...}` body (ErrorOut)
and says what the status means there. A stream gives the schema of its lines with `ndjson(...)`.
WebSockets, which OpenAPI cannot describe, and the routes left out of the document on purpose are
listed, with why, in the document's own description (DESCRIPTION). tests/unit/test_openapi.py
fails for a route that is documented by none of these.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import TypeAdapter

from agentbox.wire.commands import ExecStreamEvent
from agentbox.wire.common import ErrorOut
from agentbox.wire.files import WatchEventOut
from agentbox.wire.processes import ProcessStreamEvent
from agentbox.wire.templates import BuildLogLine

#: FastAPI's `responses`: extra answers of a route by status.
Responses = dict[int | str, dict[str, Any]]
#: An error status, alone (its usual MEANING) or with what it means for one route.
Error = int | tuple[int, str]

NDJSON = "application/x-ndjson"
REF = "#/components/schemas/"

#: What an error status means, unless the route says more precisely.
MEANING: dict[int, str] = {
    400: "The request cannot work as given (say, the provider cannot do it): the detail says what to change.",
    401: "No API key, or one that is unknown or revoked: send `Authorization: Bearer <key>`.",
    403: "The key does not grant this.",
    404: "No workspace of yours with this id (another owner's is not found either), or workspaces are "
    "disabled on this server (ENABLE_AGENT_WORKSPACES).",
    409: "The workspace is not running (start it first).",
    410: "The workspace's sandbox is gone from its provider: delete the workspace.",
    413: "The request body is too large: WORKSPACE_MAX_REQUEST bytes (uploads with PUT: WORKSPACE_MAX_UPLOAD).",
    422: "A parameter or the body is not valid: `detail` lists each bad field (`loc`, `msg`, `type`), or says "
    "what is wrong.",
    429: "Too many refused credentials, or calls without a key, from your address: `Retry-After` says how many "
    "seconds to wait.",
    502: "The provider, or the helper in the sandbox, failed to do it.",
    503: "The provider cannot be reached now (the Docker engine, E2B): retry.",
    507: "The workspace's disk is full.",
}

#: What any call that runs something in a workspace's sandbox may meet besides its own errors.
IN_SANDBOX: tuple[Error, ...] = (404, 409, 410, 502, 503)
#: How a file operation in a workspace can fail (errors.FileError: by its errno), with IN_SANDBOX's.
FILE_ERRORS: tuple[Error, ...] = (
    (400, "The file operation failed in the workspace otherwise: the detail names the errno."),
    (403, "The path may not be read or written (EACCES, EPERM)."),
    (404, "No workspace of yours with this id, or the path does not exist."),
    (409, "The workspace is not running, or the path is of the wrong kind (a directory for a file)."),
    410,
    422,
    502,
    503,
)


def errors(*codes: Error, key: bool = True) -> Responses:
    """FastAPI `responses` for these error statuses, each with the ErrorOut body.

    Every route also answers 429 (the rate limits of web/limits.py come before any route) and, unless
    `key` is false (a route that needs no API key), 401.
    """
    answers: Responses = {}
    for code in ((401,) if key else ()) + codes + (429,):
        status, meaning = code if isinstance(code, tuple) else (code, MEANING[code])
        answers[status] = {"model": ErrorOut, "description": meaning}
    return dict(sorted(answers.items(), key=lambda answer: str(answer[0])))


#: The lines of the NDJSON streams, by the name of their schema in the document.
LINES: dict[str, Any] = {
    "ExecStreamEvent": ExecStreamEvent,
    "WatchEventOut": WatchEventOut,
    "ProcessStreamEvent": ProcessStreamEvent,
    "BuildLogLine": BuildLogLine,
}


def ndjson(line: str, what: str) -> Responses:
    """The 200 answer of a stream of NDJSON lines, each a `line` (a name of LINES).

    `itemSchema` is how OpenAPI 3.2 describes a sequence's items (FastAPI's own JSON Lines answers use
    it too); `schema` is for the tools that know only 3.1.
    """
    if line not in LINES:
        raise ValueError(f"{line!r} is not a name of LINES: add its model there")
    body = {"type": "string", "description": f"NDJSON: one JSON object per line, each as {line} says"}
    return {200: {"description": what, "content": {NDJSON: {"schema": body, "itemSchema": {"$ref": REF + line}}}}}


#: WebSocket routes, which OpenAPI cannot describe: what each carries and what it needs.
WEBSOCKETS: dict[str, str] = {
    "/api/v1/workspaces/{workspace_id}/processes/{pid}/terminal": (
        "the terminal of a process started with `pty`. Binary frames carry its bytes both ways; a text frame "
        '`{"cols", "rows"}` resizes it; its output comes from `?offset=` (default: all that is kept), then its '
        'exit as a text frame `{"exit_code", "signal", "ended_at"}`. Needs `Authorization: Bearer <key>`, or '
        "`?token=` from `POST .../terminal/token` (for browsers, which cannot set the header). Refused before "
        'the upgrade with the error\'s status and `{"detail"}`: 401, 404, 409 for a process without a terminal.'
    ),
    "/api/v1/workspaces/{workspace_id}/ports/{port}/{path}": (
        "a WebSocket onto the server listening on `port` in the workspace, relayed frame by frame. Needs "
        "`Authorization: Bearer <key>` (not passed on); at most WORKSPACE_MAX_WEBSOCKETS_PER_WORKSPACE per "
        "workspace and WORKSPACE_MAX_WEBSOCKETS_PER_CALLER per caller (429 past either)."
    ),
    "/preview/{token}/{path}": (
        "the same relay through a preview link (`path_url` of `GET .../ports/{port}/url`): the token is the "
        "credential, no key."
    ),
}

#: HTTP routes left out of the document on purpose, and why. A path ending in / (but /) stands for all under it.
UNDOCUMENTED: dict[str, str] = {
    "/api/v1/workspaces/{workspace_id}/ports/{port}/{path}": (
        "a request under any method, relayed to the server listening on `port` in the workspace (at `/{path}`, "
        "with the query): its answers are that server's own, not this API's, so there is nothing to describe "
        "but its path. Needs `Authorization: Bearer <key>` (not passed on); 502 when nothing listens there, "
        "504 when it does not start answering within 60 s."
    ),
    "/preview/{token}/{path}": (
        "the same relay through a preview link (`path_url` of `GET .../ports/{port}/url`), for browsers: the "
        "token is the credential."
    ),
    "/e2b/": (
        "E2B's control plane (E2B_API_URL), for code written for E2B's SDK: its paths, bodies and errors "
        '(`{"code", "message"}`) are E2B\'s and documented by E2B; docs/e2b-endpoint.md says which agentbox '
        "serves. Off with WORKSPACE_E2B_API=false."
    ),
    "/mcp": (
        "the MCP endpoint (streamable HTTP, JSON-RPC 2.0): MCP's `tools/list` describes its tools, each a call "
        "of a route of this document. Needs `Authorization: Bearer <key>`."
    ),
    "/ui": "the dashboard: static files; it signs in with an API key and calls this API.",
    "/": "a redirect to the dashboard, /ui/.",
    "/openapi.json": "this document.",
    "/docs": "this document as a page (Swagger UI).",
    "/docs/oauth2-redirect": "a page of Swagger UI's own.",
    "/redoc": "this document as a page (ReDoc).",
}

#: Served before any route, chosen by host or by path (middleware): in no route table, so listed here.
BEFORE_ROUTES: dict[str, str] = {
    "{port}-{workspace_id}.{WORKSPACE_PREVIEW_DOMAIN}": (
        "a preview host (`url` of `GET .../ports/{port}/url`; `{port}-{workspace_id}.localhost:{port of this "
        "server}` when no domain is set): the app on `port` at the root of an origin of its own, HTTP and "
        "WebSocket. The link's token comes once as `?agentbox_preview=` and is then kept in a cookie of that "
        "host."
    ),
    "/e2b/envd/": (
        "envd, E2B's in-sandbox daemon (E2B_SANDBOX_URL), for every sandbox (the `E2b-Sandbox-Id` header names "
        "it): Connect RPC, `/files` and `/health` as E2B's SDK speaks them, with the sandbox's access token "
        "(docs/e2b-wire-protocol.md)."
    ),
    "49983-{workspace_id}.{WORKSPACE_PREVIEW_DOMAIN}": "envd of one sandbox, at the root of its own host (E2B_DOMAIN).",
}


def _listing(title: str, entries: dict[str, str]) -> str:
    return f"## {title}\n\n" + "\n".join(f"- `{path}`: {what}" for path, what in entries.items())


DESCRIPTION = "\n\n".join(
    [
        "Isolated workspaces for AI agents: Docker containers under gVisor, reached through this API, "
        "its MCP endpoint, E2B's SDK or the dashboard.",
        "## Authentication\n\nEvery route needs an API key, `Authorization: Bearer <key>`, unless its "
        "description says otherwise (`GET /api/v1/health` needs none). Keys are made by an admin "
        "(`POST /api/v1/keys`) or listed in WORKSPACE_API_KEYS; a key sees its owner's workspaces only.",
        '## Errors\n\nEvery error is JSON, `{"detail": ...}` (ErrorOut): a sentence that says what went '
        "wrong and what to do, or, for a request that does not validate (422), each bad field. Each "
        "operation lists the statuses it answers. A 500 is a bug: its detail names the exception, the "
        "server's log has the rest.",
        f"## Streams\n\nStreamed answers are NDJSON (`{NDJSON}`): one JSON object per line, as it happens. "
        "The schema of a line is the media type's `itemSchema`. An error before the stream starts is an "
        'ordinary error answer; one after is the stream\'s last line, `{"error": ...}`.',
        _listing("WebSockets (not in this document: OpenAPI cannot describe them)", WEBSOCKETS),
        _listing("Routes left out of this document on purpose", UNDOCUMENTED),
        _listing("Served before any route (by host or path)", BEFORE_ROUTES),
    ]
)


class DocumentedAPI(FastAPI):
    """FastAPI whose OpenAPI document also holds the schemas of the NDJSON streams' lines (a route's
    `responses` can only give a model for its JSON answer) and no 422 FastAPI made up: FastAPI adds one to
    every route with parameters, even free strings that cannot be invalid; routes list their own."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        document = super().openapi()  # kept as self.openapi_schema: completed in place
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, line in LINES.items():
            schema = TypeAdapter(line).json_schema(ref_template=REF + "{model}", mode="serialization")
            for inner, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(inner, definition)
            schemas.setdefault(name, schema)
        made_up = {"$ref": REF + "HTTPValidationError"}
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                answers = operation.get("responses", {})
                if answers.get("422", {}).get("content", {}).get("application/json", {}).get("schema") == made_up:
                    del answers["422"]
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return document
