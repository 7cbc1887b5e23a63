"""E2B's template build API without an engine (e2b_api/templates.py), over a fake provider that records what it is
asked to build: the SDK's steps as the Dockerfile agentbox builds (each kind of step, a RUN's user put back, COPY
from the uploaded tar), the start and ready commands in the template's WORKDIR, the status with the log as entries
and a failed build's reason naming the E2B step, and the refusals (a 4xx saying what to fix)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agentbox.providers.base import ImageBuild
from tests.archives import tar_of
from tests.unit.apps import KEYS, build_app
from tests.unit.test_templates import BuildingProvider

ALICE = {"X-API-Key": KEYS["alice"]}
HASH = "ab" * 32


class RecordingProvider(BuildingProvider):
    def __init__(self) -> None:
        super().__init__()
        self.builds: list[ImageBuild] = []

    def build_image(self, build: ImageBuild, on_log: Callable[[str], None]) -> str:
        self.builds.append(build)
        return super().build_image(build, on_log)


@pytest.fixture
def provider() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def app(tmp_path: Path, provider: RecordingProvider) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path, {"gvisor": provider})) as client:
        yield client


def requested(app: TestClient, name: str, **body: Any) -> tuple[str, str]:
    answer = app.post("/e2b/v3/templates", json={"name": name, **body}, headers=ALICE)
    assert answer.status_code == 202, answer.text
    return answer.json()["templateID"], answer.json()["buildID"]


def status(app: TestClient, template: str, build: str, offset: int = 0, key: str = "alice") -> dict[str, Any]:
    answer = app.get(
        f"/e2b/templates/{template}/builds/{build}/status",
        params={"logsOffset": offset},
        headers={"X-API-Key": KEYS[key]},
    )
    found: dict[str, Any] = answer.json()
    return found if answer.status_code == 200 else {"code": answer.status_code, **found}


def ended(app: TestClient, template: str, build: str) -> dict[str, Any]:
    for _ in range(200):
        now = status(app, template, build)
        if now["status"] not in ("waiting", "building"):
            return now
        time.sleep(0.05)
    raise AssertionError(now)


def test_the_steps_are_the_dockerfile_built_and_the_log_the_entries(
    app: TestClient, provider: RecordingProvider
) -> None:
    provider.lines = ["Step 1/3 : FROM base\n", "Step 2/3 : RUN x\n", "one\n", "two\n"]
    template, build = requested(app, "site:v2")
    assert template == "site" and status(app, template, build)["status"] == "waiting"

    # The COPY's files: not here, then uploaded to the signed URL (no API key), then here.
    link = app.get(f"/e2b/templates/{template}/files/{HASH}", headers=ALICE)
    assert link.status_code == 201 and link.json()["present"] is False
    assert app.put(link.json()["url"], content=tar_of({"app/main.py": b"print(1)\n"})).status_code == 200
    assert app.get(f"/e2b/templates/{template}/files/{HASH}", headers=ALICE).json()["present"] is True

    steps = [
        {"type": "COPY", "args": ["app/*", "/srv", "", ""], "filesHash": HASH, "force": False},
        {"type": "ENV", "args": ["GREETING", 'say "hi"', "N", "1"], "force": False},
        {"type": "RUN", "args": ["apt-get -h && echo ok"], "force": False},
        {"type": "USER", "args": ["user"], "force": False},
        {"type": "RUN", "args": ["whoami", "root"], "force": False},
        {"type": "WORKDIR", "args": ["/srv"], "force": False},
    ]
    body = {"fromImage": "e2bdev/base", "steps": steps, "startCmd": "python3 main.py", "readyCmd": "true"}
    started = app.post(f"/e2b/v2/templates/{template}/builds/{build}", json=body, headers=ALICE)
    assert started.status_code == 202, started.text
    done = ended(app, template, build)
    assert done["status"] == "ready" and "reason" not in done
    assert [e["message"] for e in done["logEntries"]] == [line.rstrip("\n") for line in provider.lines]
    assert status(app, template, build, offset=3)["logEntries"][0]["message"] == "two"
    assert status(app, template, build, offset=4)["logEntries"] == []

    (made,) = provider.builds
    assert made.dockerfile == (
        "FROM agentbox/e2b-base:bookworm\n"
        'COPY ["app/*", "/srv/"]\n'
        'ENV GREETING="say \\"hi\\"" N="1"\n'
        'RUN ["/bin/sh", "-c", "apt-get -h && echo ok"]\n'
        "USER user\n"
        "USER root\n"
        'RUN ["/bin/sh", "-c", "whoami"]\n'
        "USER user\n"
        "WORKDIR /srv\n"
    )
    with tarfile.open(fileobj=io.BytesIO(made.context or b""), mode="r:*") as context:
        assert context.getnames() == ["app/main.py"]
    shown = app.get("/api/v1/templates/site:v2", headers={"Authorization": f"Bearer {KEYS['alice']}"}).json()
    assert (shown["start_cmd"], shown["ready_cmd"]) == ("cd /srv && python3 main.py", "cd /srv && true")
    assert app.get("/e2b/templates/aliases/site:v2", headers=ALICE).status_code == 200
    # The build can be started once; another owner finds neither it nor the template.
    again = app.post(f"/e2b/v2/templates/{template}/builds/{build}", json=body, headers=ALICE)
    assert again.status_code == 409
    assert status(app, template, build, key="bob")["code"] == 404
    assert app.get("/e2b/templates/site/tags", headers={"X-API-Key": KEYS["bob"]}).status_code == 404


def test_a_failed_build_names_the_e2b_step_that_failed(app: TestClient, provider: RecordingProvider) -> None:
    provider.fail = True
    # Step 3 of the Dockerfile is the RUN of E2B's second step (its first, a RUN as root, is three lines).
    provider.lines = ["Step 1/5 : FROM base\n", "Step 2/5 : USER root\n", "Step 3/5 : RUN false\n", "it broke\n"]
    template, build = requested(app, "broken")
    steps = [{"type": "RUN", "args": ["true", "root"]}, {"type": "RUN", "args": ["false"]}]
    app.post(f"/e2b/v2/templates/{template}/builds/{build}", json={"steps": steps}, headers=ALICE)
    done = ended(app, template, build)
    assert done["status"] == "error"
    assert done["reason"]["message"].endswith("returned a non-zero code: 1")
    assert done["reason"]["step"] == "1" and done["reason"]["logEntries"][-1]["message"] == "it broke"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"steps": [{"type": "ADD", "args": ["a", "b"]}]}, "unknown step type 'ADD'"),
        ({"steps": [{"type": "COPY", "args": ["a", "/b"], "filesHash": HASH}]}, "were not uploaded"),
        ({"steps": [{"type": "COPY", "args": ["a", "/b", "user", ""], "filesHash": HASH}]}, "with a user or mode"),
        ({"steps": [{"type": "ENV", "args": ["A"]}]}, "name and value pairs"),
        ({"steps": [{"type": "WORKDIR", "args": ["/a\nRUN x"]}]}, "line break"),
        ({"fromImageRegistry": {"type": "registry", "username": "u", "password": "p"}}, "never pull"),
        ({"fromTemplate": "nothing-of-mine"}, "no template of yours"),
        ({"startCmd": "x" * 5000}, "startCmd"),
    ],
)
def test_bad_steps_are_a_400_saying_what(app: TestClient, body: dict[str, Any], why: str) -> None:
    template, build = requested(app, "bad")
    answer = app.post(f"/e2b/v2/templates/{template}/builds/{build}", json=body, headers=ALICE)
    assert answer.status_code == 400 and why in answer.json()["message"], answer.text
    assert status(app, template, build)["status"] == "waiting"  # nothing built: it can be started again


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"name": "x", "tags": ["a", "b"]}, "one tag per build"),
        ({"name": "tpl-1"}, "name 'tpl-1'"),
        ({"name": "ok", "tags": ["no spaces"]}, "tag 'no spaces'"),
        ({}, "give the template a name"),
    ],
)
def test_bad_names_and_tags_are_a_400(app: TestClient, body: dict[str, Any], why: str) -> None:
    answer = app.post("/e2b/v3/templates", json=body, headers=ALICE)
    assert answer.status_code == 400 and why in answer.json()["message"], answer.text


def test_upload_urls_are_the_owners_and_the_hashs(app: TestClient) -> None:
    template, _ = requested(app, "up")
    url = app.get(f"/e2b/templates/{template}/files/{HASH}", headers=ALICE).json()["url"]
    assert app.put(url.replace(HASH, "cd" * 32), content=tar_of({})).status_code == 403
    assert app.put(url.split("token=")[0] + "token=x", content=tar_of({})).status_code == 403
    assert app.put(url, content=b"not a tar").status_code == 400
    assert app.get(f"/e2b/templates/{template}/files/nothex", headers=ALICE).status_code == 400
    # bob's link for the same hash says his files are not there (each owner's files are their own).
    assert app.put(url, content=tar_of({"f": b"1"})).status_code == 200
    bobs = app.get(f"/e2b/templates/{template}/files/{HASH}", headers={"X-API-Key": KEYS["bob"]})
    assert bobs.json()["present"] is False
    assert json.loads(app.get(f"/e2b/templates/{template}/files/{HASH}", headers=ALICE).text)["present"] is True


def test_uploads_and_build_records_expire(app: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentbox.e2b_api import templates

    template, old_build = requested(app, "kept")
    url = app.get(f"/e2b/templates/{template}/files/{HASH}", headers=ALICE).json()["url"]
    assert app.put(url, content=tar_of({"f": b"1"})).status_code == 200
    uploads = list((tmp_path / "e2b-templates" / "files").glob("*/*"))
    records = list((tmp_path / "e2b-templates" / "builds").glob("*.json"))
    assert len(uploads) == 1 and len(records) == 1
    # A day without use, a week since the build was requested: gone at the next request's look.
    past = time.time() - templates.BUILDS_KEPT - 60
    os.utime(uploads[0], (past, past))
    os.utime(records[0], (past, past))
    monkeypatch.setattr(templates, "_pruned_at", 0.0)
    requested(app, "kept")
    assert not uploads[0].exists() and not records[0].exists()
    assert status(app, template, old_build)["code"] == 404
    assert app.get(f"/e2b/templates/{template}/files/{HASH}", headers=ALICE).json()["present"] is False


def test_wait_for_port_is_run_without_ss_when_the_image_has_none() -> None:
    from e2b import wait_for_file, wait_for_port

    from agentbox.e2b_api.templates import ready_command

    rewritten = ready_command(wait_for_port(8080).get_cmd())
    assert rewritten.startswith('if command -v ss >/dev/null; then [ -n "$(ss -Htuln sport = :8080)" ]; else ')
    assert '== "1F90"' in rewritten and "/proc/net/tcp" in rewritten  # 8080 as the kernel's tables write it
    assert ready_command(wait_for_file("/tmp/x").get_cmd()) == wait_for_file("/tmp/x").get_cmd()
    assert ready_command("ss -tl | grep 80") == "ss -tl | grep 80"
