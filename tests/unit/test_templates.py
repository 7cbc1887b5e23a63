"""Templates without an engine: the Dockerfile checks made before any build (workspaces/templates.py), and the
API over a fake provider that builds (its log bounded and resumable, the server's limit on builds under way, a
provider that cannot build). The engine's builds, gVisor workspaces and pools are
tests/integration/test_templates.py's."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from agentbox.errors import Unprocessable
from agentbox.providers.base import Capabilities, ImageBuild
from agentbox.workspaces.templates import LOG_KEPT, MAX_CONTEXT_ENTRIES, UNPACKED_RATIO, dockerfile_bases
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
        provider.release.clear()  # held, so that it is still building when answered
        assert bob.build_template("second", "FROM base\n").status == "building"  # room again
        provider.release.set()
        assert [line.status for line in bob.template_log("second") if line.status] == ["failed"]
        assert refused(lambda: bob.template("first")).status_code == 404  # alice's
        alice.delete_template("first")
        assert provider.removed == [first.image]  # whatever a failed build may have left under its name


def test_a_provider_that_cannot_build_says_so(tmp_path: Path) -> None:
    app = build_app(tmp_path, {"gvisor": FakeProvider("gvisor")}, WORKSPACE_PROVIDERS="gvisor")
    with TestClient(app) as test_client, client(test_client, KEYS["alice"]) as alice:
        refusal = refused(lambda: alice.build_template("t", "FROM base\n"))
        assert refusal.status_code == 400 and "gvisor or docker" in refusal.detail
        assert alice.templates() == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_mcp_builds_a_template_and_tells_its_status(tmp_path: Path, anyio_backend: str) -> None:
    from tests.unit.test_mcp import mcp_session, served

    provider = BuildingProvider()
    async with served(tmp_path, {"gvisor": provider}) as app, mcp_session(app, KEYS["alice"]) as session:
        built = await session.call_tool("build_template", {"name": "tools", "tag": "v1", "dockerfile": "FROM base\n"})
        assert not built.is_error and built.structured_content is not None
        assert built.structured_content["status"] in ("building", "ready")
        status: dict[str, object] = {}
        for _ in range(100):
            answer = await session.call_tool("template_status", {"template": "tools:v1"})
            assert answer.structured_content is not None
            status = answer.structured_content
            if status["status"] != "building":
                break
            await anyio.sleep(0.05)
        assert status["status"] == "ready" and status["id"] == built.structured_content["id"]
        bad = await session.call_tool("build_template", {"name": "bad", "dockerfile": "FORM base\n"})
        assert bad.is_error and "unknown instruction 'FORM'" in bad.content[0].text  # type: ignore[union-attr]


def test_a_workspace_is_made_from_a_ready_template_only_where_its_image_runs(tmp_path: Path) -> None:
    provider = BuildingProvider()
    app = build_app(tmp_path, {"gvisor": provider, "e2b": FakeProvider("e2b")}, WORKSPACE_PROVIDERS="gvisor,e2b")
    with TestClient(app) as test_client, client(test_client, KEYS["alice"]) as alice:
        provider.release.clear()
        started = alice.build_template("app", "FROM base\n")
        early = refused(lambda: alice.create(template="app"))
        assert early.status_code == 409 and "building" in early.detail
        provider.release.set()
        assert [line.status for line in alice.template_log("app") if line.status] == ["ready"]
        assert alice.create(template="app").image == started.image
        elsewhere = refused(lambda: alice.create(template="app", provider="e2b"))
        assert elsewhere.status_code == 400 and "cannot run a template's image" in elsewhere.detail
        both = refused(lambda: alice.create(template="app", image="other:1"))
        assert both.status_code == 422 and "leave out `image`" in both.detail


def _context(files: dict[str, int]) -> bytes:
    """A gzip'd tar of files of zeros, by name and size: a few KiB of gzip however large they are."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as archive:
        for name, size in files.items():
            info = tarfile.TarInfo(name)
            info.size = size
            archive.addfile(info, _Zeros(size))
    return packed.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count

    def readable(self) -> bool:
        return True


def test_a_context_that_unpacks_past_its_limit_is_refused_before_any_build(
    building: tuple[TestClient, BuildingProvider],
) -> None:
    app, provider = building
    provider.lines = ["Step 1/1 : FROM base\n"]
    with client(app, KEYS["alice"]) as alice:
        bomb = _context({"zeros": UNPACKED_RATIO * (4 << 20) + 1})  # past 16x the 4 MiB default, as ~70 KiB of gzip
        assert len(bomb) < 4 << 20
        refusal = refused(lambda: alice.build_template("bomb", "FROM base\n", context=bomb))
        assert refusal.status_code == 413 and "unpacks to more than" in refusal.detail
        many = _context({f"f{i}": 0 for i in range(MAX_CONTEXT_ENTRIES + 1)})
        refusal = refused(lambda: alice.build_template("many", "FROM base\n", context=many))
        assert refusal.status_code == 413 and "entries" in refusal.detail
        assert alice.templates() == []
        fits = _context({"app/main.py": 1000})
        provider.release.clear()  # held, so that it is still building when answered
        assert alice.build_template("fits", "FROM base\n", context=fits).status == "building"
        provider.release.set()
