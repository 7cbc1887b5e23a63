"""The client as a library: light to import, and its typed options the same as the API's bodies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import BaseModel

from agentbox import client
from agentbox.wire.commands import ExecIn
from agentbox.wire.common import FieldError
from agentbox.wire.github import RepoSpec
from agentbox.wire.keys import CreateKey
from agentbox.wire.processes import ProcessIn
from agentbox.wire.tools import GrepToolIn
from agentbox.wire.workspaces import CreateWorkspace

#: What a program that only talks to a server must not load: the server, its database, its settings.
SERVER_ONLY = ("sqlalchemy", "fastapi", "starlette", "alembic", "docker", "uvicorn", "agentbox.config")


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    # In a fresh interpreter: this one has loaded the server long ago.
    script = "import json, sys, agentbox.client; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout)
    server = [name for name in loaded if name in SERVER_ONLY or name.split(".")[0] in SERVER_ONLY]
    assert server == []
    assert "agentbox.db.models" not in loaded and "agentbox.wire.workspaces" in loaded  # the bodies come, not the rows


@pytest.mark.parametrize(
    ("options", "body", "besides"),
    [
        (client.WorkspaceOptions, CreateWorkspace, set()),
        (client.RepoOptions, RepoSpec, set()),
        (client.ExecOptions, ExecIn, {"command"}),
        (client.ProcessOptions, ProcessIn, {"command"}),
        (client.GrepOptions, GrepToolIn, {"pattern", "path"}),
        (client.KeyQuota, CreateKey, {"owner", "name", "admin"}),
    ],
)
def test_the_clients_options_are_the_fields_of_the_bodies_they_fill(
    options: type, body: type[BaseModel], besides: set[str]
) -> None:
    # A field added to a body and not to the client's options would be out of mypy's sight in callers.
    keys = options.__required_keys__ | options.__optional_keys__  # type: ignore[attr-defined]
    assert keys == set(body.model_fields) - besides


def test_an_api_error_says_each_bad_field_in_one_line() -> None:
    error = client.APIError(
        422,
        [
            FieldError(type="missing", loc=["body", "command"], msg="Field required"),
            FieldError(type="greater_than", loc=["body", "cpu"], msg="Input should be greater than 0"),
        ],
    )
    assert error.message == "body.command: Field required; body.cpu: Input should be greater than 0"
    assert str(error) == f"422: {error.message}"
    assert client.APIError(404, "no workspace 'ws-1'").message == "no workspace 'ws-1'"
