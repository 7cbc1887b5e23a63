"""The OpenAPI document the server serves (/openapi.json, /docs): every route in it says what it does and
what it needs, its typed answers and its errors; what cannot or should not be in it is listed with why.

A route added without these fails here, not in a user's generated client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount

from agentbox.client import Client
from agentbox.web import dependencies, openapi
from agentbox.wire.common import ErrorOut
from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app
from tests.unit.test_api import InProcess

Operation = tuple[str, str, dict[str, Any]]
ERROR_BODY = {"application/json": {"schema": {"$ref": openapi.REF + "ErrorOut"}}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, TestClient]]:
    app = build_app(tmp_path_factory.mktemp("openapi"), {"gvisor": FakeProvider("gvisor")}, WORKSPACE_E2B_API="true")
    with TestClient(app) as client:
        yield app, client


@pytest.fixture(scope="module")
def document(served: tuple[FastAPI, TestClient]) -> dict[str, Any]:
    answer = served[1].get("/openapi.json")
    assert answer.status_code == 200
    found: dict[str, Any] = answer.json()
    return found


@pytest.fixture(scope="module")
def operations(document: dict[str, Any]) -> list[Operation]:
    return [(method.upper(), path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """(full path, route) of every HTTP route in the document."""
    return [
        (context.path, context.original_route)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.original_route.include_in_schema
    ]


def dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for inner in dependant.dependencies:
        yield from dependants(inner)


def test_every_operation_has_a_summary_of_its_own(served: tuple[FastAPI, TestClient]) -> None:
    # FastAPI makes one from the function's name ("Run", "Read") when the route gives none.
    unsummarized = [(path, route.name) for path, route in api_routes(served[0]) if not route.summary]
    assert unsummarized == []


def test_every_operation_says_what_it_does_and_what_it_needs(operations: list[Operation]) -> None:
    vague = []
    for method, path, op in operations:
        description = op.get("description", "")
        keyed = bool(op.get("security")) and {} not in op["security"]  # `{}`: it may come without one too
        needs = re.search(r"Needs (no API key|an (admin's )?API key)", description)
        says_what = len(description.split("Needs ")[0].split()) >= 5  # a sentence about what it does
        if not (says_what and needs and (needs.group(1) != "no API key") == keyed):
            vague.append((method, path))
    assert vague == [], "each description says what the route does, then `Needs an API key...` or `Needs no API key`"


def test_every_operation_answers_a_typed_success(operations: list[Operation]) -> None:
    untyped = []
    for method, path, op in operations:
        successes = {status: answer for status, answer in op["responses"].items() if status.startswith("2")}
        for status, answer in successes.items():
            content = answer.get("content", {})
            if status == "204":
                typed = not content
            else:  # JSON: a model of wire/ (not `dict`); a file or a stream: its media type and what it holds
                typed = bool(content) and all(
                    "$ref" in media.get("schema", {})
                    if kind == "application/json"
                    else bool(media.get("schema") or media.get("itemSchema"))
                    for kind, media in content.items()
                )
            if not typed:
                untyped.append((method, path, status))
        if not successes:
            untyped.append((method, path, "no 2xx"))
    assert untyped == []


def test_every_error_answer_has_the_detail_body(operations: list[Operation], document: dict[str, Any]) -> None:
    wrong = [
        (method, path, status)
        for method, path, op in operations
        for status, answer in op["responses"].items()
        if status[0] in "45" and (answer.get("content") != ERROR_BODY or not answer.get("description"))
    ]
    assert wrong == []
    assert [(method, path) for method, path, op in operations if not any(s[0] == "4" for s in op["responses"])] == []
    assert document["components"]["schemas"]["ErrorOut"]["required"] == ["detail"]


def test_keyed_operations_list_the_401_and_the_others_do_not(operations: list[Operation]) -> None:
    for method, path, op in operations:
        assert ("401" in op["responses"]) == bool(op.get("security")), (method, path)
        assert "429" in op["responses"], (method, path)  # the rate limits come before every route


def test_a_route_whose_parameters_can_be_invalid_lists_its_422(
    served: tuple[FastAPI, TestClient], document: dict[str, Any]
) -> None:
    def can_be_invalid(route: APIRoute) -> bool:
        for dependant in dependants(route.dependant):
            if dependant.body_params:
                return True
            for where in ("path", "query", "header", "cookie"):
                for param in getattr(dependant, f"{where}_params"):
                    info = param.field_info
                    free_text = info.annotation in (str, str | None) and not info.metadata
                    if not free_text or (where != "path" and info.is_required()):
                        return True
        return False

    for path, route in api_routes(served[0]):
        for method in route.methods:
            listed = "422" in document["paths"][path][method.lower()]["responses"]
            assert listed == can_be_invalid(route), (method, path)


def test_admin_routes_say_so_and_list_the_403(served: tuple[FastAPI, TestClient], document: dict[str, Any]) -> None:
    admin_only = [
        (path, route)
        for path, route in api_routes(served[0])
        if any(d.call is dependencies.admin for d in dependants(route.dependant))
    ]
    assert admin_only  # POST /api/v1/keys at least
    for path, route in admin_only:
        for method in route.methods:
            op = document["paths"][path][method.lower()]
            assert "403" in op["responses"] and "Needs an admin's API key" in op["description"], (method, path)


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    schemas = document["components"]["schemas"]
    found = set(refs(document))
    assert found and {ref.removeprefix(openapi.REF) for ref in found} <= set(schemas)
    assert "HTTPValidationError" not in schemas  # FastAPI's 422, which is not the body the server sends


def test_websockets_and_routes_left_out_are_listed_with_why(
    served: tuple[FastAPI, TestClient], document: dict[str, Any]
) -> None:
    def plain(path: str) -> str:
        return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)  # "{path:path}" -> "{path}"

    def covers(key: str, path: str) -> bool:  # "/e2b/" stands for all under it; "/" for itself
        return plain(path) == key or (key != "/" and key.endswith("/") and path.startswith(key))

    sockets, hidden = set(), set()
    for context in iter_route_contexts(served[0].routes):
        route = context.original_route
        if isinstance(route, APIWebSocketRoute):
            sockets.add(plain(str(context.path)))
        elif isinstance(route, Mount) or not getattr(route, "include_in_schema", True):
            hidden.add(str(context.path))
    assert sockets == set(openapi.WEBSOCKETS)
    assert [path for path in hidden if not any(covers(key, path) for key in openapi.UNDOCUMENTED)] == []
    assert [key for key in openapi.UNDOCUMENTED if not any(covers(key, path) for path in hidden)] == []  # none stale
    described = document["info"]["description"]
    for path in [*openapi.WEBSOCKETS, *openapi.UNDOCUMENTED, *openapi.BEFORE_ROUTES]:
        assert f"`{path}`" in described
    assert served[1].get("/docs").status_code == 200


def test_streamed_lines_and_errors_match_what_the_document_says(
    served: tuple[FastAPI, TestClient], document: dict[str, Any]
) -> None:
    # What the server sends, checked against the document itself (not the models it was made from).
    stream = document["paths"]["/api/v1/workspaces/{workspace_id}/exec/stream"]["post"]["responses"]["200"]
    line_schema = {**stream["content"][openapi.NDJSON]["itemSchema"], "components": document["components"]}
    error_schema = {"$ref": openapi.REF + "ErrorOut", "components": document["components"]}
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    with (
        Client("http://testserver", KEYS["alice"], transport=InProcess(served[1])) as alice,
        httpx.Client(base_url="http://testserver/api/v1", transport=InProcess(served[1])) as raw,
    ):
        workspace = alice.create()
        lines = raw.post(
            f"/workspaces/{workspace.id}/exec/stream", json={"command": "echo hi; exit 3"}, headers=headers
        ).text.splitlines()
        assert len(lines) >= 2  # its output, then its exit
        for line in lines:
            jsonschema.validate(json.loads(line), line_schema)
        for answer in (
            raw.post(f"/workspaces/{workspace.id}/exec", json={"command": ""}, headers=headers),  # 422: a list
            raw.get("/workspaces/ws-0000000000000000", headers=headers),  # 404: a sentence
            raw.get("/workspaces"),  # 401
        ):
            assert answer.status_code in (401, 404, 422)
            jsonschema.validate(answer.json(), error_schema)
            ErrorOut.model_validate_json(answer.content)
        alice.delete(workspace.id)
