"""E2B's template build API on agentbox's E2B endpoint, through the unmodified `e2b` SDK and real gVisor builds
(no network, nothing pulled): `Template().from_base_image()...` built with `Template.build` (its files uploaded,
its log handed to `on_build_logs`), a sandbox of it running its start command and ready when made, a failing
step as the SDK's BuildException with the step's output, bad input refused with a message the SDK shows,
another owner's key finding nothing; and the cases of E2B's own template tests (tests/*/template_*/) that build,
with `ubuntu:22.04` (which builds here would have to pull) replaced by the base image."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AsyncTemplate,
    LogEntry,
    Sandbox,
    Template,
    wait_for_file,
    wait_for_port,
    wait_for_timeout,
    wait_for_url,
)
from e2b.exceptions import BuildException

from agentbox.client import APIError, Client

from .conftest import KEYS, Server, eventually

PREFIX = "e2bt-"


def name() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mine(sdk: str, server: Server) -> Iterator[Client]:
    """alice's agentbox client; the templates the test built through E2B's API are deleted after it."""
    with server.client("alice") as client:
        yield client
        for workspace in client.list():
            if workspace.image and workspace.image.startswith("agentbox/template:"):
                with contextlib.suppress(APIError):
                    client.delete(workspace.id)
        for template in client.templates():
            if template.name.startswith(PREFIX):
                with contextlib.suppress(APIError):
                    client.delete_template(template.id)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "greeting.txt").write_text("hello from the context\n")
    (site / "index.html").write_text("<p>served</p>\n")
    return tmp_path


def build(template: object, called: str, logs: list[str] | None = None, **kwargs: object) -> object:
    def collect(entry: LogEntry) -> None:
        if logs is not None:
            logs.append(entry.message)

    return Template.build(template, called, cpu_count=1, memory_mb=1024, on_build_logs=collect, **kwargs)  # type: ignore[arg-type]


def test_a_template_built_by_the_sdk_makes_ready_sandboxes(mine: Client, context: Path) -> None:
    called = name()
    template = (
        Template(file_context_path=context)
        .from_base_image()
        .copy("site/*", "/opt/site/")
        .set_envs({"GREETING": "hi there"})
        .run_cmd("cat /opt/site/greeting.txt && uname -r > /opt/site/kernel")
        .run_cmd(["whoami > /opt/site/builder", "echo done"], user="root")
        .set_workdir("/opt/site")
        # wait_for_port runs `ss`, which the base image lacks: the endpoint reads /proc/net instead (under gVisor).
        .set_start_cmd("sleep 1; exec python3 -m http.server 8080 --bind 127.0.0.1", wait_for_port(8080))
    )
    logs: list[str] = []
    info = build(template, called, logs)
    assert info.template_id == called and info.name == called and info.tags == ["latest"]  # type: ignore[attr-defined]
    # The SDK's own lines, then the builder's: the RUN's output among them, under gVisor.
    assert any(line.startswith("Template created with ID: ") for line in logs)
    assert "hello from the context" in logs and any("Building under gVisor" in line for line in logs)
    assert Template.get_build_status(info).status.value == "ready"  # type: ignore[arg-type]
    assert Template.exists(called) and not Template.exists(name())

    # A sandbox of it: ready when made (its start command serving, the ready command passed), the build's files.
    sandbox = Sandbox.create(called, timeout=120)
    try:
        served = sandbox.commands.run("curl -s http://127.0.0.1:8080/greeting.txt", timeout=30)
        assert served.stdout == "hello from the context\n"
        shown = sandbox.commands.run(
            "cat /opt/site/kernel /opt/site/builder; echo $GREETING; cat /opt/site/index.html", timeout=30
        )
        kernel, builder, greeting, page = shown.stdout.splitlines()
        assert kernel == "4.4.0" and builder == "root"  # the RUN steps ran under gVisor
        assert greeting == "hi there" and page == "<p>served</p>"
        assert mine.get(sandbox.sandbox_id).image.startswith("agentbox/template:tpl-")
        assert sandbox.get_info().template_id == called  # shown by the name it was made by, as on E2B
    finally:
        sandbox.kill()

    # Built again under the same name: the new build replaces it, as on E2B.
    again = build(Template().from_base_image().run_cmd("echo second > /opt/second"), called)
    assert Template.get_build_status(again).status.value == "ready"  # type: ignore[arg-type]
    sandbox = Sandbox.create(called, timeout=60)
    try:
        assert sandbox.commands.run("cat /opt/second; ls /opt/site 2>&1 || true").stdout.startswith("second\n")
    finally:
        sandbox.kill()


def test_a_failing_step_is_the_sdks_build_error_with_its_output(mine: Client) -> None:
    called = name()
    template = Template().from_base_image().run_cmd("echo about to fail; echo on stderr >&2; exit 3")
    logs: list[str] = []
    with pytest.raises(BuildException) as caught:
        build(template, called, logs)
    assert "returned a non-zero code: 3" in str(caught.value)
    assert "about to fail" in logs and "on stderr" in logs
    assert mine.template(f"{called}:latest").status == "failed"


def test_bad_input_is_refused_with_what_to_fix(mine: Client, context: Path) -> None:
    # A base the engine does not have: builds never pull.
    with pytest.raises(BuildException) as caught:
        build(Template().from_image("agentbox-test/not-on-this-engine:1").run_cmd("true"), name())
    assert "no such image on this server's engine" in str(caught.value)
    # Registry credentials: nothing is pulled, so they have no use.
    with pytest.raises(BuildException) as caught:
        build(Template().from_image("registry.example.com/private:1", username="u", password="p"), name())
    assert "builds here never pull" in str(caught.value)
    # Two tags in one build (agentbox's templates are name:tag), and a name agentbox cannot take.
    with pytest.raises(BuildException) as caught:
        build(Template().from_base_image(), name(), tags=["v1", "v2"])
    assert "one tag per build" in str(caught.value)
    with pytest.raises(BuildException) as caught:
        build(Template().from_base_image(), "tpl-looks-like-an-id")
    assert "name 'tpl-looks-like-an-id'" in str(caught.value)
    # A COPY with a mode: not offered by the builder (said, not dropped).
    with pytest.raises(BuildException) as caught:
        build(Template(file_context_path=context).from_base_image().copy("site/*", "/opt/", mode=0o755), name())
    assert "COPY with a user or mode" in str(caught.value)
    assert not [t for t in mine.templates() if t.name.startswith(PREFIX)]


def test_another_owners_template_and_build_are_not_found(mine: Client, sdk: str) -> None:
    called = name()
    info = build(Template().from_base_image().run_cmd("echo mine > /opt/mine"), called)
    bob = KEYS["bob"]
    assert not Template.exists(called, api_key=bob)
    with pytest.raises(Exception) as caught:
        Template.get_build_status(info, api_key=bob)  # type: ignore[arg-type]
    assert "not found" in str(caught.value)
    # bob's sandbox of that name is no template of his: an image of that name, which the engine has not.
    with pytest.raises(Exception) as caught:
        Sandbox.create(called, api_key=bob, timeout=30)
    assert "mine" not in str(caught.value)
    # bob cannot start alice's requested build, nor get an upload link under it.
    headers = {"X-API-Key": bob}
    started = httpx.post(
        f"{sdk}/e2b/v2/templates/{called}/builds/{info.build_id}",  # type: ignore[attr-defined]
        json={"fromImage": "e2bdev/base", "steps": [], "force": False},
        headers=headers,
    )
    assert started.status_code == 404, started.text
    # An upload URL is the uploader's: another file's hash, or a forged token, is refused.
    link = httpx.get(f"{sdk}/e2b/templates/{called}/files/{'a' * 64}", headers={"X-API-Key": KEYS["alice"]})
    assert link.status_code == 201 and link.json()["present"] is False
    url = link.json()["url"]
    assert httpx.put(url.replace("a" * 64, "b" * 64), content=b"x").status_code == 403
    assert httpx.put(url.split("token=")[0] + "token=forged", content=b"x").status_code == 403
    assert httpx.put(url, content=b"not a tar").status_code == 400


# E2B's own template tests (tests/sync/template_sync of e2b-dev/E2B), their cases replayed live: `ubuntu:22.04`
# (which the builds here would pull) is the base image, each built under a fresh name.


def test_e2b_build_template(mine: Client, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "test.txt").write_text("This is a test file.")
    template = (
        Template(file_context_path=tmp_path)
        .from_base_image()
        .copy("folder/*", "folder", force_upload=True)
        .run_cmd("cat folder/test.txt")
        .set_workdir("/app")
        .set_start_cmd("echo 'Hello, world!'", wait_for_timeout(10_000))
    )
    build(template, name(), skip_cache=True)


def test_e2b_build_template_with_symlinks_and_resolved(mine: Client, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "test.txt").write_text("This is a test file.")
    (folder / "symlink.txt").symlink_to("test.txt")
    (folder / "symlink2.txt").symlink_to(folder / "test.txt")
    (folder / "symlink3.txt").symlink_to("12345test.txt")  # dangling
    build(
        Template(file_context_path=tmp_path)
        .from_base_image()
        .skip_cache()
        .copy("folder/*", "folder", force_upload=True)
        .run_cmd("cat folder/symlink.txt"),
        name(),
    )
    build(
        Template(file_context_path=tmp_path)
        .from_base_image()
        .skip_cache()
        .copy("folder/symlink.txt", "folder/symlink.txt", force_upload=True, resolve_symlinks=True)
        .run_cmd("cat folder/symlink.txt"),
        name(),
    )


def test_e2b_build_template_from_base_template(mine: Client) -> None:
    build(Template().from_template("base"), name(), skip_cache=True)


def test_e2b_run_command_and_as_root(mine: Client) -> None:
    build(Template().from_base_image().skip_cache().run_cmd("ls -l"), name())
    build(Template().from_base_image().skip_cache().run_cmd('test "$(whoami)" = "root"', user="root"), name())


def test_e2b_run_command_as_user_that_does_not_exist(mine: Client) -> None:
    # E2B's words are envd's ("invalid username: 'root123'"); the builder's name the user all the same.
    with pytest.raises(BuildException) as caught:
        build(Template().from_base_image().skip_cache().run_cmd("whoami", user="root123"), name())
    assert "unable to find user root123" in str(caught.value)


def test_e2b_make_symlink_and_force(mine: Client) -> None:
    build(
        Template()
        .from_base_image()
        .skip_cache()
        .make_symlink(".bashrc", ".bashrc.local")
        .run_cmd('test "$(readlink .bashrc.local)" = ".bashrc"'),
        name(),
    )
    build(
        Template()
        .from_base_image()
        .make_symlink(".bashrc", ".bashrc.local")
        .skip_cache()
        .make_symlink(".bashrc", ".bashrc.local", force=True)
        .run_cmd('test "$(readlink .bashrc.local)" = ".bashrc"'),
        name(),
    )


def test_e2b_build_in_background_returns_while_it_builds(mine: Client) -> None:
    template = (
        Template()
        .from_base_image()
        .skip_cache()
        .run_cmd("sleep 5")
        .set_start_cmd('echo "Hello"', wait_for_timeout(10_000))
    )
    info = Template.build_in_background(template, f"{name()}:v1", cpu_count=1, memory_mb=1024)
    assert info is not None and info.tags == ["v1"]
    assert Template.get_build_status(info).status.value == "building"
    ended = eventually(lambda: Template.get_build_status(info).status.value != "building", timeout=120)
    assert ended and Template.get_build_status(info).status.value == "ready"


def test_tags_assigned_listed_and_removed(mine: Client) -> None:
    called = name()
    built = build(
        Template()
        .from_base_image()
        .run_cmd("echo tagged > /opt/tagged")
        .set_start_cmd(
            "exec python3 -m http.server 8081 --directory /opt", wait_for_url("http://127.0.0.1:8081/tagged")
        ),
        f"{called}:v1",
    )
    assert built.tags == ["v1"]  # type: ignore[attr-defined]
    # E2B's test_tags.py cases: several tags at once, one alone, then what a tag may not be.
    assigned = Template.assign_tags(f"{called}:v1", ["production", "latest"])
    assert set(assigned.tags) == {"production", "latest"} and assigned.build_id
    assert "stable" in Template.assign_tags(f"{called}:v1", "stable").tags
    for bad in (":invalid-tag", f"{called}:"):
        with pytest.raises(Exception) as caught:
            Template.assign_tags(f"{called}:v1", bad)
        assert "tag" in str(caught.value)
    listed = Template.get_tags(called)
    assert sorted(t.tag for t in listed) == ["latest", "production", "stable", "v1"]
    assert len({t.build_id for t in listed}) == 4
    # A tag is a template of its own: a sandbox of `name` (latest) has the v1 build's files, ready.
    sandbox = Sandbox.create(called, timeout=60)
    try:
        assert sandbox.commands.run("cat /opt/tagged").stdout == "tagged\n"
        assert sandbox.get_info().template_id == called
    finally:
        sandbox.kill()
    Template.remove_tags(called, ["production", "stable"])
    assert sorted(t.tag for t in Template.get_tags(called)) == ["latest", "v1"]
    with pytest.raises(Exception) as caught:
        Template.remove_tags(called, "production")
    assert "not found" in str(caught.value)
    with pytest.raises(Exception) as caught:
        Template.get_tags(called, api_key=KEYS["bob"])
    assert "not found" in str(caught.value)  # another owner's


def test_the_async_sdk_builds_and_makes_a_ready_sandbox(mine: Client) -> None:
    called = name()

    async def build_and_use() -> tuple[str, str, str]:
        template = (
            AsyncTemplate()
            .from_template("base")
            .run_cmd("echo async > /opt/made")
            .set_start_cmd("sleep 1; touch /tmp/up; exec sleep infinity", wait_for_file("/tmp/up"))
        )
        logs: list[str] = []
        info = await AsyncTemplate.build(template, called, on_build_logs=lambda e: logs.append(e.message))
        status = await AsyncTemplate.get_build_status(info)
        sandbox = await AsyncSandbox.create(called, timeout=60)
        try:
            # Ready when made: the start command's file is there at once, without waiting here.
            done = await sandbox.commands.run("cat /opt/made; test -f /tmp/up && echo up")
        finally:
            await sandbox.kill()
        return status.status.value, done.stdout, "\n".join(logs)

    status, out, logs = asyncio.run(build_and_use())
    assert status == "ready" and out == "async\nup\n" and "Building under gVisor" in logs
