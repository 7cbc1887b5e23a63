"""Templates over real gVisor workspaces, on a server of this module's own: one build shared by the module (FROM
the default workspace image, a RUN writing a file, a start command serving it, a ready command fetching it), its
log followed while it builds; workspaces made from it start ready; a failing RUN, a Dockerfile that does not
parse, a ready command that never passes, another owner's key; deletes refused while in use and leaving nothing
on the engine after."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import docker
import docker.errors
import httpx
import pytest

from agentbox.client import APIError, Client
from agentbox.wire.templates import TemplateOut
from tests.archives import tar_of

from .conftest import KEYS, Server, eventually

BASE = "agentbox/workspace:bookworm"  # the default workspace image (WORKSPACE_IMAGE), on the engine already
# RUN writes a file from the context and one of its own; the second RUN ticks for a few seconds, so that the log
# is followed while the build still runs. The start command serves /opt/site; the ready command fetches from it.
DOCKERFILE = f"""\
FROM {BASE}
COPY greeting.txt /opt/site/greeting.txt
RUN echo built-by-a-template > /opt/site/marker && echo wrote the marker
RUN uname -r > /opt/site/kernel; (python3 -c "import socket; socket.create_connection(('1.1.1.1', 80), 2)" \
    && echo online || echo offline) > /opt/site/network
RUN for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done
"""
START = "cd /opt/site && exec python3 -m http.server 8080 --bind 127.0.0.1"
READY = "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/marker')\""


def refused(call: object) -> APIError:
    with pytest.raises(APIError) as caught:
        call()  # type: ignore[operator]
    return caught.value


@pytest.fixture(scope="module")
def templating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("templates"),
        env={
            "WORKSPACE_MAX_CONCURRENT": "6",
            "WORKSPACE_TEMPLATE_POOL_SIZE": "2",
            "WORKSPACE_NETWORK_NAME": "",
            "WORKSPACE_TEMPLATE_BUILD_DISK": "256M",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alice(templating: Server) -> Iterator[Client]:
    with templating.client("alice") as client:
        yield client
        for workspace in client.list():
            with contextlib.suppress(APIError):
                client.delete(workspace.id)
        for template in client.templates():
            with contextlib.suppress(APIError):
                client.delete_template(template.id)


@pytest.fixture(scope="module")
def built(alice: Client) -> tuple[TemplateOut, list[str], bool]:
    """The module's template, the log's pieces as the follower got them, and whether a tick of the log was read
    while the template was still building."""
    started = alice.build_template(
        "site",
        DOCKERFILE,
        tag="v1",
        context=tar_of({"greeting.txt": b"hello from the context\n"}),
        start_cmd=START,
        ready_cmd=READY,
    )
    assert started.status == "building" and started.image.endswith(started.id)
    pieces: list[str] = []
    seen_while_building = False
    end = None
    for line in alice.template_log(started.id):
        if line.data is not None:
            pieces.append(line.data)
            if "tick 1" in line.data and alice.template(started.id).status == "building":
                seen_while_building = True
        if line.status is not None:
            end = line
    assert end is not None and end.status == "ready", (end, "".join(pieces))
    return alice.template("site:v1"), pieces, seen_while_building


def test_a_template_builds_with_its_log_streamed_and_makes_ready_workspaces(
    built: tuple[TemplateOut, list[str], bool], alice: Client, docker_client: docker.DockerClient
) -> None:
    template, pieces, seen_while_building = built
    assert template.status == "ready" and template.error is None and template.built_at is not None
    log = "".join(pieces)
    assert "wrote the marker" in log and "tick 6" in log
    assert "Building under gVisor" in log  # the engine has the build runtime (scripts/setup-host.sh)
    assert seen_while_building  # the log came while the build ran, not at its end
    assert docker_client.images.get(template.image)  # on the engine, under its own name
    assert [t.id for t in alice.templates()] == [template.id]

    # Made from it: the RUN's file and the context's are there, the start command runs, ready before the answer.
    workspace = alice.create(template="site:v1")
    assert workspace.image == template.image
    # Nothing of the build's steps is carried into it (an image takes the labels of the container it came from).
    labels = docker_client.containers.get(f"agentbox-{workspace.id}").labels
    assert not [key for key in labels if key.startswith("agentbox.build")]
    assert alice.exec(workspace.id, "cat /opt/site/marker /opt/site/greeting.txt").stdout == (
        "built-by-a-template\nhello from the context\n"
    )
    fetched = alice.exec(
        workspace.id,
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/greeting.txt').read().decode())\"",
    )
    assert fetched.exit_code == 0 and "hello from the context" in fetched.stdout
    assert any("http.server" in " ".join(p.command) for p in alice.processes(workspace.id))
    assert "4.4.0" in alice.exec(workspace.id, "uname -r").stdout  # under gVisor
    # The RUN steps ran under gVisor too, with no network.
    assert alice.exec(workspace.id, "cat /opt/site/kernel /opt/site/network").stdout == "4.4.0\noffline\n"

    # Booted afresh, it gets its start command again, ready before the answer: started after a stop, and a fork
    # (files only: the workspace has a network).
    def serving(workspace_id: str) -> bool:
        servers = [p for p in alice.processes(workspace_id) if p.status == "running" and "http.server" in p.command[-1]]
        return len(servers) == 1 and alice.exec(workspace_id, "curl -sf localhost:8080/greeting.txt").exit_code == 0

    alice.stop(workspace.id)
    alice.start(workspace.id)
    assert serving(workspace.id)
    fork = alice.fork(workspace.id, 1)
    assert not fork.snapshot.memory_kept and fork.workspaces[0].id is not None
    assert serving(fork.workspaces[0].id)
    alice.delete(fork.workspaces[0].id)

    # By id too; and the log again later, whole, without following.
    again = alice.create(template=template.id)
    assert alice.exec(again.id, "cat /opt/site/marker").stdout == "built-by-a-template\n"
    lines = list(alice.template_log("site:v1", follow=False))
    assert "".join(line.data or "" for line in lines) == log and lines[-1].status == "ready"

    # Deleting it while they exist: a 409 naming both; once they are gone, the image goes too.
    conflict = refused(lambda: alice.delete_template("site:v1"))
    assert conflict.status_code == 409 and workspace.id in conflict.detail and again.id in conflict.detail
    alice.delete(workspace.id)
    alice.delete(again.id)


def test_a_failing_run_fails_the_build_with_its_log_and_leaves_nothing(
    alice: Client, docker_client: docker.DockerClient
) -> None:
    dockerfile = f"FROM {BASE}\nRUN echo first step done\nRUN echo about to fail && exit 3\n"
    started = alice.build_template("broken", dockerfile)
    lines = list(alice.template_log(started.id))
    end = lines[-1]
    assert end.status == "failed" and end.error is not None and "non-zero code: 3" in end.error
    log = "".join(line.data or "" for line in lines)
    assert "about to fail" in log and "non-zero code: 3" in log
    failed = alice.template("broken")
    # No step's container is left either (each RUN ran in a container of its own).
    assert docker_client.api.containers(all=True, filters={"name": f"agentbox-build-{started.id}-"}) == []
    assert failed.status == "failed" and failed.error == end.error
    # The completed steps' images are gone (the FROM image is not one of them), and so is any tag.
    base = docker_client.images.get(BASE).id
    for step in set(re.findall(r" ---> ([0-9a-f]{12})", log)):
        if not base.startswith(f"sha256:{step}"):
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.images.get(step)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(failed.image)
    # A workspace from it is refused, saying why; deleting it leaves nothing.
    refusal = refused(lambda: alice.create(template="broken"))
    assert refusal.status_code == 409 and "failed" in refusal.detail
    alice.delete_template("broken")
    assert refused(lambda: alice.template("broken")).status_code == 404


def test_a_step_that_writes_past_the_builds_disk_is_killed(alice: Client, docker_client: docker.DockerClient) -> None:
    dockerfile = f"FROM {BASE}\nRUN head -c 2G /dev/zero > /big && echo all-$((1 + 1))G-written\n"
    started = alice.build_template("filler", dockerfile)
    lines = list(alice.template_log(started.id))
    end = lines[-1]
    assert end.status == "failed" and end.error is not None and "WORKSPACE_TEMPLATE_BUILD_DISK" in end.error
    assert "all-2G-written" not in "".join(line.data or "" for line in lines)  # killed while it wrote
    assert docker_client.api.containers(all=True, filters={"name": f"agentbox-build-{started.id}-"}) == []
    alice.delete_template("filler")


def test_bad_dockerfiles_are_refused_before_any_build(alice: Client) -> None:
    for dockerfile, expected in [
        (f"FORM {BASE}\nRUN true\n", "unknown instruction 'FORM'"),
        ("RUN echo no base\n", "before any FROM"),
        (f"FROM {BASE}\nRUN\n", "RUN needs an argument"),
        (f"FROM {BASE}\nCOPY onlyone\n", "COPY needs a source and a destination"),
        ("# nothing but a comment\n", "no FROM"),
    ]:
        refusal = refused(lambda: alice.build_template("bad", dockerfile))  # noqa: B023
        assert refusal.status_code == 422 and expected in refusal.detail, (dockerfile, refusal.detail)
    staged = refused(lambda: alice.build_template("bad", f"FROM {BASE} AS one\nFROM {BASE}\nRUN true\n"))
    assert (
        staged.status_code == 422 and "multi-stage" in staged.detail and "WORKSPACE_TEMPLATE_BUILDER" in staged.detail
    )
    missing = refused(lambda: alice.build_template("bad", "FROM agentbox/no-such-image:1\n"))
    assert missing.status_code == 400 and "agentbox/no-such-image:1" in missing.detail and "pull" in missing.detail
    not_tar = refused(lambda: alice.build_template("bad", f"FROM {BASE}\n", context=b"not a tar at all"))
    assert not_tar.status_code == 422 and "context" in not_tar.detail
    assert all(t.name != "bad" for t in alice.templates())  # nothing was made


def test_a_ready_command_that_never_passes_fails_the_create_and_removes_the_workspace(
    alice: Client, docker_client: docker.DockerClient
) -> None:
    started = alice.build_template("never", f"FROM {BASE}\n", ready_cmd="echo not yet >&2; false", ready_timeout=2)
    assert [line.status for line in alice.template_log(started.id) if line.status] == ["ready"]
    before = {w.id for w in alice.list()}
    refusal = refused(lambda: alice.create(template="never"))
    assert refusal.status_code == 422 and "ready command" in refusal.detail and "not yet" in refusal.detail
    assert {w.id for w in alice.list()} == before  # the workspace was removed
    alice.delete_template("never")
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(started.image)
    assert docker_client.images.get(BASE)  # its FROM image stays


def test_another_owners_key_finds_no_template(built: tuple[TemplateOut, list[str], bool], templating: Server) -> None:
    template = built[0]
    with templating.client("bob") as bob:
        for call in (
            lambda: bob.template(template.id),
            lambda: bob.template("site:v1"),
            lambda: list(bob.template_log(template.id)),
            lambda: bob.delete_template(template.id),
            lambda: bob.create(template=template.id),
        ):
            assert refused(call).status_code == 404
        assert bob.templates() == []
        # Its image by name is no way around it.
        image = refused(lambda: bob.create(image=template.image))
        assert image.status_code == 422 and "template" in image.detail


def test_deleting_the_template_leaves_nothing_on_the_engine(
    built: tuple[TemplateOut, list[str], bool], alice: Client, docker_client: docker.DockerClient
) -> None:
    template = built[0]
    eventually(lambda: not alice.list())
    alice.delete_template(template.id)
    assert refused(lambda: alice.template(template.id)).status_code == 404
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(template.image)
    assert not [i for i in docker_client.images.list(all=True) if any(template.id in t for t in i.tags)]


def claims(server: Server) -> float:
    """Workspaces claimed from any warm pool so far (the server's own count, at /metrics)."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=10).text
    found = re.search(r"^agentbox_pool_claims_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert found is not None, text[:2000]
    return float(found.group(1))


def test_a_pool_of_the_template_hands_out_workspaces_already_ready(
    alice: Client, templating: Server, docker_client: docker.DockerClient
) -> None:
    alive = "while true; do date > /tmp/alive; sleep 0.2; done"
    started = alice.build_template(
        "pooled",
        f"FROM {BASE}\nRUN echo pooled > /opt/pooled\n",
        start_cmd=alive,
        ready_cmd="test -s /tmp/alive",
        pool_size=1,
    )
    assert [line.status for line in alice.template_log(started.id) if line.status] == ["ready"]
    eventually(lambda: alice.template("pooled").pool_ready == 1, timeout=120)

    before = claims(templating)
    workspace = alice.create(template="pooled")
    assert claims(templating) == before + 1  # taken from the template's pool, not booted cold
    assert workspace.image == started.image
    assert alice.exec(workspace.id, "test -s /tmp/alive && cat /opt/pooled").stdout == "pooled\n"
    assert any("/tmp/alive" in " ".join(p.command) and p.status == "running" for p in alice.processes(workspace.id))
    eventually(lambda: alice.template("pooled").pool_ready == 1, timeout=120)  # refilled

    # A pool larger than the server allows is refused, naming the setting.
    too_big = refused(lambda: alice.build_template("big", f"FROM {BASE}\n", pool_size=3))
    assert too_big.status_code == 422 and "WORKSPACE_TEMPLATE_POOL_SIZE" in too_big.detail

    # Deleting the template takes its pool with it: no container of its image is left, nor the image.
    alice.delete(workspace.id)
    alice.delete_template("pooled")
    # One listing call (no look at each container: other tests' containers come and go on a shared engine).
    left = [c["Names"] for c in docker_client.api.containers(all=True) if c["Image"] == started.image]
    assert left == []
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(started.image)


def test_the_cli(alice: Client, templating: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    from .test_cli import agentbox

    directory = tmp_path_factory.mktemp("cli-template")
    (directory / "Dockerfile").write_text(f"FROM {BASE}\nCOPY note.txt /opt/note.txt\nRUN echo cli step ran\n")
    context = directory / "context"
    context.mkdir()
    (context / "note.txt").write_text("from the cli's context\n")
    built = agentbox(
        templating,
        "templates", "build", "cli-made:v2", "--file", str(directory / "Dockerfile"), "--context", str(context),
        "--ready-cmd", "test -f /opt/note.txt",
    ).stdout  # fmt: skip
    assert "cli step ran" in built  # the log, as it came
    template_id = built.split()[-1]
    assert template_id.startswith("tpl-")
    listed = agentbox(templating, "templates", "ls", env={"COLUMNS": "200"}).stdout
    assert "cli-made:v2" in listed and template_id in listed and "ready" in listed
    child = agentbox(templating, "ws", "create", "--template", "cli-made:v2").stdout.strip()
    assert alice.exec(child, "cat /opt/note.txt").stdout == "from the cli's context\n"
    busy = agentbox(templating, "templates", "rm", "cli-made:v2", check=False)
    assert busy.returncode == 1 and "409" in busy.stderr and child in busy.stderr
    alice.delete(child)
    agentbox(templating, "templates", "rm", "cli-made:v2")
    (directory / "Bad").write_text(f"FORM {BASE}\n")
    bad = agentbox(templating, "templates", "build", "bad", "--file", str(directory / "Bad"), check=False)
    assert bad.returncode == 1 and "422" in bad.stderr and "FORM" in bad.stderr
    failing = directory / "Failing"
    failing.write_text(f"FROM {BASE}\nRUN echo going down && false\n")
    failed = agentbox(templating, "templates", "build", "failing", "--file", str(failing), check=False)
    assert failed.returncode == 1 and "going down" in failed.stdout and "failed" in failed.stderr
    agentbox(templating, "templates", "rm", "failing")


def test_the_engines_builder_when_chosen_builds_every_feature_under_runc(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> None:
    server = Server(tmp_path_factory.mktemp("engine-builds"), env={"WORKSPACE_TEMPLATE_BUILDER": "engine"}).start()
    try:
        with server.client("alice") as alice:
            staged = f"FROM {BASE} AS one\nRUN uname -r > /kernel\nFROM {BASE}\nCOPY --from=one /kernel /opt/kernel\n"
            started = alice.build_template("staged", staged)
            lines = list(alice.template_log(started.id))
            assert lines[-1].status == "ready", lines
            assert "Building under gVisor" not in "".join(line.data or "" for line in lines)
            workspace = alice.create(template="staged")
            kernel = alice.exec(workspace.id, "cat /opt/kernel").stdout.strip()
            assert kernel and kernel != "4.4.0"  # the RUN step ran on the host's kernel (runc), as documented
            assert alice.exec(workspace.id, "uname -r").stdout.strip() == "4.4.0"  # the workspace, under gVisor
            alice.delete(workspace.id)
            alice.delete_template("staged")
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.images.get(started.image)
    finally:
        server.stop()


def test_a_build_cut_short_by_the_server_stopping_fails_and_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> None:
    server = Server(tmp_path_factory.mktemp("cut-short"), env={"WORKSPACE_NETWORK_NAME": ""}).start()
    try:
        alice = server.client("alice")
        started = alice.build_template("slow", f"FROM {BASE}\nRUN echo step one && sleep 600\n")
        steps = {"name": f"agentbox-build-{started.id}-"}
        eventually(lambda: docker_client.api.containers(filters=steps) != [])  # its RUN is under way
        server.stop(kill=True)
        server.start()
        alice = server.client("alice")
        cut = alice.template("slow")
        assert cut.status == "failed" and "stopped during the build" in (cut.error or "")
        assert docker_client.api.containers(all=True, filters=steps) == []
        alice.delete_template("slow")
    finally:
        server.stop()
