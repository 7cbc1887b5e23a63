"""Schemathesis against the live OpenAPI schema: generated requests never get a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from .conftest import KEYS, Server

AUTH = {"Authorization": f"Bearer {KEYS['fuzzer']}"}
#: uvicorn's answer (400, plain text) to bytes that are not an HTTP request; the app never sees them.
UNPARSABLE = "Invalid HTTP request received."
# Archives go up as raw bytes, as files do: random ones are refused (400), which is what is asked of them.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Iterator[schemathesis.BaseSchema]:
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # Whatever the generated requests managed to create is removed: workspaces, then the volumes they may mount
    # (each a mounted disk on the host), snapshots and templates (each an image on the engine).
    with server.client("fuzzer") as fuzzer:
        for workspace in fuzzer.list():
            fuzzer.delete(workspace.id)
        for volume in fuzzer.volumes():
            fuzzer.delete_volume(volume.id)
        while snapshots := fuzzer.snapshots().snapshots:
            for snapshot in snapshots:
                fuzzer.delete_snapshot(snapshot.id)
        for template in fuzzer.templates():  # once its build has ended (a build under way is not deleted)
            for _line in fuzzer.template_log(template.id):
                pass
            fuzzer.delete_template(template.id)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_get_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=AUTH, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.text == UNPARSABLE:
        return  # not HTTP at all (say, a control character in a header): uvicorn's parser answers, not the app
    if response.status_code >= 400:
        assert response.json()["detail"], "an error without a detail"
