"""Templates without an engine: the Dockerfile checks made before any build (workspaces/templates.py), and the
API over a fake provider that builds (its log bounded and resumable, the server's limit on builds under way, a
provider that cannot build). The engine's builds, gVisor workspaces and pools are
tests/integration/test_templates.py's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agentbox.errors import Unprocessable
from agentbox.providers.base import Capabilities, ImageBuild
from agentbox.workspaces.templates import LOG_KEPT, dockerfile_bases
from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app
from tests.unit.test_api import client, refused

BUILDS = Capabilities(runtime="fake", isolation="none (a unit-test fake)", templates=True)


class BuildingProvider(FakeProvider):
    """Builds by writing `lines` to the log (or failing after them), each build held until `release` is set."""

    def __init__(self) -> None:
        super().__init__("gvisor", capabilities=BUILDS)
        self.lines: list[str] = []
        self.fail = False
        self.release = threading.Event()
        self.release.set()
        self.removed: list[str] = []

    def check_bases(self, images: list[str]) -> None:
        return None

    def build_image(self, build: ImageBuild, on_log: Callable[[str], None]) -> str:
        for line in self.lines:
            on_log(line)
        self.release.wait(30)
        if self.fail:
            from agentbox.providers.docker.images import BuildFailed

            raise BuildFailed("the build failed: The command '/bin/sh -c false' returned a non-zero code: 1")
        return "sha256:" + "0" * 64

    def remove_image(self, ref: str) -> None:
        self.removed.append(ref)


@pytest.mark.parametrize(
    ("dockerfile", "why"),
    [
        ("FORM base\n", "line 1: unknown instruction 'FORM'"),
        ("RUN true\nFROM base\n", "line 1: RUN before any FROM"),
        ("FROM base\nRUN\n", "line 2: RUN needs an argument"),
        ("FROM base\nADD one\n", "line 2: ADD needs a source and a destination"),
        ("FROM base AS\n", "FROM takes an image and, optionally, AS name"),
        ("# only a comment\n", "no FROM"),
        ("", "no FROM"),
    ],
)
def test_a_dockerfile_that_does_not_parse_is_refused_naming_the_line(dockerfile: str, why: str) -> None:
    with pytest.raises(Unprocessable) as refusal:
        dockerfile_bases(dockerfile)
    assert why in refusal.value.detail


def test_the_bases_are_the_images_from_not_the_stages_nor_variables() -> None:
    text = (
        "# syntax=docker/dockerfile:1\nARG V=1\nFROM --platform=linux/amd64 base:1 AS build\nRUN make \\\n  all\n"
        "FROM build\nFROM other:${V}\nFROM base:1\nCOPY --from=build /out /out\n"
    )
    assert dockerfile_bases(text) == ["base:1"]


@pytest.fixture
def building(tmp_path: Path) -> Iterator[tuple[TestClient, BuildingProvider]]:
    provider = BuildingProvider()
    app = build_app(tmp_path, {"gvisor": provider}, WORKSPACE_PROVIDERS="gvisor", WORKSPACE_MAX_BUILDS="1")
    with TestClient(app) as test_client:
        yield test_client, provider


def test_a_long_log_keeps_its_end_and_a_follower_is_told_what_it_missed(
    building: tuple[TestClient, BuildingProvider],
) -> None:
    app, provider = building
    provider.lines = [f"line {i:06d} " + "x" * 90 + "\n" for i in range(1500)]  # ~150 KiB
    with client(app, KEYS["alice"]) as alice:
        started = alice.build_template("big", "FROM base\n")
        lines = list(alice.template_log(started.id))
        assert lines[-1].status == "ready"
        done = alice.template("big")
        whole = "".join(provider.lines)
        assert done.log_size == len(whole) > LOG_KEPT
        assert lines[0].dropped and lines[0].resumed_at == len(whole) - LOG_KEPT
        text = "".join(line.data or "" for line in lines)
        assert text == whole[-LOG_KEPT:]
        # Resumed from where a follower left off: only what came after.
        resumed = list(alice.template_log("big", offset=len(whole) - 100, follow=False))
        assert "".join(line.data or "" for line in resumed) == whole[-100:] and resumed[-1].status == "ready"


def test_builds_past_the_servers_limit_are_refused_until_one_ends(
    building: tuple[TestClient, BuildingProvider],
) -> None:
    app, provider = building
    provider.release.clear()
    with client(app, KEYS["alice"]) as alice, client(app, KEYS["bob"]) as bob:
        first = alice.build_template("first", "FROM base\n")
        busy = refused(lambda: bob.build_template("second", "FROM base\n"))
        assert busy.status_code == 429 and "WORKSPACE_MAX_BUILDS" in busy.detail
        held = refused(lambda: alice.delete_template("first"))
        assert held.status_code == 409 and "being built" in held.detail
        provider.fail = True
        provider.release.set()
        assert [line.status for line in alice.template_log("first") if line.status] == ["failed"]
        assert "non-zero code: 1" in (alice.template("first").error or "")
        assert bob.build_template("second", "FROM base\n").status == "building"  # room again
        assert refused(lambda: bob.template("first")).status_code == 404  # alice's
        alice.delete_template("first")
        assert provider.removed == [first.image]  # whatever a failed build may have left under its name


def test_a_provider_that_cannot_build_says_so(tmp_path: Path) -> None:
    app = build_app(tmp_path, {"gvisor": FakeProvider("gvisor")}, WORKSPACE_PROVIDERS="gvisor")
    with TestClient(app) as test_client, client(test_client, KEYS["alice"]) as alice:
        refusal = refused(lambda: alice.build_template("t", "FROM base\n"))
        assert refusal.status_code == 400 and "gvisor or docker" in refusal.detail
        assert alice.templates() == []
