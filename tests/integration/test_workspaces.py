"""The core service end to end: a real server, a real dockerd, real gVisor workspaces."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from agentbox.client import APIError, Client
from agentbox.wire.commands import ExitEvent, OutputEvent
from agentbox.wire.workspaces import WorkspaceOut

from .conftest import WORKSPACE_LABEL, Server


def test_workspace_runs_under_gvisor(server: Server, alice: Client, docker_client: docker.DockerClient) -> None:
    health = server.health()
    assert health.runtime == "runsc" and health.gvisor is True, health
    created = alice.create(cpu=1.5, memory="768M")
    try:
        assert created.status == "running"
        assert created.runtime == "runsc" and created.provider == "gvisor"
        assert created.memory == "768M" and created.cpu == 1.5
        result = alice.exec(created.id, "dmesg | head -n 1; uname -r")
        first_line, release = result.stdout.splitlines()[:2]
        assert "Starting gVisor" in first_line
        assert release == "4.4.0"
        # The engine holds the limits and the label we promised.
        (container,) = docker_client.containers.list(filters={"label": f"{WORKSPACE_LABEL}={created.id}"})
        host_config = container.attrs["HostConfig"]
        assert host_config["Runtime"] == "runsc"
        assert host_config["NanoCpus"] == 1_500_000_000
        # Under gVisor the limits are enforced inside the sandbox (init -M/-P), the host's are a
        # backstop with headroom for gVisor itself (docs/runtime.md).
        limit = 768 << 20
        assert container.attrs["Config"]["Cmd"][1:] == [
            *("init", "-M", str(limit), "-P", "256"),
            *("-S", "/.agentbox/run/control.sock", "-I", created.id),  # the helper's control socket
        ]
        assert host_config["Memory"] == limit + (128 << 20) + limit // 8
        assert host_config["PidsLimit"] == 40 * 256 + 256
        assert host_config["ReadonlyRootfs"] is True
    finally:
        alice.delete(created.id)


def test_create_response_fields_and_ttl(alice: Client) -> None:
    created = alice.create(ttl_days=0.5, labels={"team": "infra"}, env={"GREETING": "hi"})
    try:
        for field in (
            "id",
            "owner",
            "provider",
            "runtime",
            "status",
            "image",
            "cpu",
            "memory",
            "disk",
            "created_at",
            "expires_at",
            "labels",
        ):
            assert field in created.model_fields_set  # sent by the server, not a default
        assert created.owner == "alice" and created.labels == {"team": "infra"}
        assert created.image == "agentbox/workspace:bookworm" and created.disk == "10G"
        assert created.expires_at is not None
        span = created.expires_at - created.created_at
        assert abs(span.total_seconds() - 12 * 3600) < 1
        assert alice.exec(created.id, "echo $GREETING").stdout == "hi\n"
    finally:
        alice.delete(created.id)
    persistent = alice.create(ephemeral=False)
    try:
        assert persistent.expires_at is None
    finally:
        alice.delete(persistent.id)


def test_exec_semantics(alice: Client, workspace: WorkspaceOut) -> None:
    ws = workspace.id
    result = alice.exec(ws, "echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.timed_out is False and result.duration_ms >= 0
    # An argv list is run as is, without a shell.
    assert alice.exec(ws, ["printf", "%s|", "a b", "$HOME"]).stdout == "a b|$HOME|"
    assert alice.exec(ws, "pwd", cwd="/tmp").stdout == "/tmp\n"
    assert alice.exec(ws, "echo $X-ünï", env={"X": "y"}).stdout == "y-ünï\n"
    assert alice.exec(ws, "id -u").stdout == "1000\n"
    missing = alice.exec(ws, ["no-such-program"])
    assert missing.exit_code == 127 and "no-such-program" in missing.stderr


def test_timeout_kills_the_whole_process_group(alice: Client, workspace: WorkspaceOut) -> None:
    ws = workspace.id
    result = alice.exec(ws, "echo started; sleep 300 & sleep 301 & sleep 302", timeout=1)
    assert result.timed_out is True
    assert result.stdout == "started\n"
    assert 1000 <= result.duration_ms < 10000
    left = alice.exec(ws, "ps -eo args | grep -c '^sleep 30[012]' || true")
    assert left.stdout.strip() == "0", "sleeps outlived the timeout"


def test_background_process_does_not_hold_exec_open(alice: Client, workspace: WorkspaceOut) -> None:
    ws = workspace.id
    started = time.monotonic()
    result = alice.exec(ws, "python3 -m http.server 8080 & echo launched", timeout=60)
    assert result.exit_code == 0 and "launched" in result.stdout
    assert time.monotonic() - started < 10, "exec waited for the background server"
    fetch = alice.exec(
        ws,
        'for i in $(seq 50); do python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:8080/').status)\" && break; sleep 0.2; done",
    )
    assert fetch.stdout.startswith("200"), fetch
    # The server, whose log goes to a pipe nobody reads any more, keeps serving.
    again = alice.exec(
        ws, "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/').status)\""
    )
    assert again.stdout == "200\n", again


def test_output_is_capped_and_flagged(alice: Client, workspace: WorkspaceOut) -> None:
    result = alice.exec(workspace.id, "head -c 12582912 /dev/zero | tr '\\0' a; echo done >&2")
    assert len(result.stdout) == 10 * 1024 * 1024
    assert result.stdout_truncated is True and result.stderr_truncated is False
    assert result.stderr == "done\n" and result.exit_code == 0


def test_exec_stream_delivers_output_as_it_arrives(alice: Client, workspace: WorkspaceOut) -> None:
    started = time.monotonic()
    arrivals = []
    events = []
    for event in alice.exec_stream(workspace.id, "echo one; sleep 2; echo two >&2; exit 4"):
        arrivals.append(time.monotonic() - started)
        events.append(event)
    assert events[0] == OutputEvent(stream="stdout", data="one\n")
    assert OutputEvent(stream="stderr", data="two\n") in events
    last = events[-1]
    assert isinstance(last, ExitEvent) and last.exit_code == 4 and last.timed_out is False
    assert arrivals[-1] - arrivals[0] >= 1.5, "the first line came only when the command ended"


def test_files_round_trip_binary_and_listing(alice: Client, workspace: WorkspaceOut) -> None:
    ws = workspace.id
    payload = bytes(range(256)) * 1000
    assert alice.write_file(ws, "/workspace/data/blob.bin", payload).size == len(payload)
    assert alice.read_file(ws, "/workspace/data/blob.bin") == payload
    assert (
        alice.exec(ws, "sha256sum < /workspace/data/blob.bin").stdout.split()[0]
        == __import__("hashlib").sha256(payload).hexdigest()
    )
    alice.write_file(ws, "/workspace/data/run.sh", b"#!/bin/sh\necho ran\n", mode="755")
    assert alice.exec(ws, "/workspace/data/run.sh").stdout == "ran\n"
    entries = {e.name: e for e in alice.list_dir(ws, "/workspace/data")}
    assert entries["blob.bin"].type == "file" and entries["blob.bin"].size == len(payload)
    assert entries["run.sh"].mode == "755"
    assert alice.write_file(ws, "/workspace/empty", b"").size == 0
    assert alice.read_file(ws, "/workspace/empty") == b""
    # Files of /proc say they are empty and are not.
    assert alice.read_file(ws, "/proc/self/status").startswith(b"Name:")
    with pytest.raises(APIError) as missing:
        alice.read_file(ws, "/workspace/nope")
    assert missing.value.status_code == 404 and "nope" in missing.value.detail


def test_paths_cannot_escape_the_workspace(alice: Client, workspace: WorkspaceOut, tmp_path: Path) -> None:
    ws = workspace.id
    marker = tmp_path / "host-secret"
    marker.write_text("host")
    # A symlink to the host path means nothing inside the sandbox: it resolves in the container.
    alice.exec(ws, f"ln -s {tmp_path} /workspace/link; ln -s /tmp /workspace/tmp-link")
    with pytest.raises(APIError) as read_through:
        alice.read_file(ws, "/workspace/link/host-secret")
    assert read_through.value.status_code == 404
    alice.write_file(ws, "/workspace/tmp-link/escaped", b"x")
    assert alice.exec(ws, "cat /tmp/escaped").stdout == "x"
    assert not Path("/tmp/escaped").exists()
    with pytest.raises(APIError) as traversal:
        alice.write_file(ws, "/workspace/../../../etc/agentbox-escape", b"x")
    # The workspace's own /etc is read-only and not the agent's: gVisor says EACCES (403), runc EROFS (400).
    assert (traversal.value.status_code, traversal.value.detail.split("(")[-1]) in ((403, "EACCES)"), (400, "EROFS)"))
    assert not Path("/etc/agentbox-escape").exists()
    assert marker.read_text() == "host"


def test_archive_of_500_files_in_one_request(alice: Client, workspace: WorkspaceOut) -> None:
    ws = workspace.id
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for number in range(500):
            data = f"file {number}\n".encode()
            info = tarfile.TarInfo(f"src/f{number:03}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    alice.write_archive(ws, "/workspace/project", buffer.getvalue())
    assert alice.exec(ws, "ls /workspace/project/src | wc -l").stdout.strip() == "500"
    assert alice.read_file(ws, "/workspace/project/src/f123.txt") == b"file 123\n"
    with tarfile.open(fileobj=io.BytesIO(alice.read_archive(ws, "/workspace/project"))) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
        assert len(names) == 500
        member = tar.extractfile("./src/f499.txt")
        assert member is not None and member.read() == b"file 499\n"
    with pytest.raises(APIError) as bad:
        alice.write_archive(ws, "/workspace/bad", b"this is not a tar archive" * 100)
    assert bad.value.status_code == 400


def test_stop_start_keeps_files(alice: Client, workspace: WorkspaceOut) -> None:
    ws = workspace.id
    alice.write_file(ws, "/workspace/keep.txt", b"still here")
    assert alice.stop(ws).status == "stopped"
    with pytest.raises(APIError) as stopped:
        alice.exec(ws, "true")
    assert stopped.value.status_code == 409 and "start" in stopped.value.detail
    assert alice.start(ws).status == "running"
    assert alice.read_file(ws, "/workspace/keep.txt") == b"still here"


def test_delete_removes_container_and_record(alice: Client, docker_client: docker.DockerClient) -> None:
    created = alice.create()
    (container,) = docker_client.containers.list(filters={"label": f"{WORKSPACE_LABEL}={created.id}"})
    alice.delete(created.id)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id)
    with pytest.raises(APIError) as gone:
        alice.get(created.id)
    assert gone.value.status_code == 404
    assert created.id not in [w.id for w in alice.list()]


def test_list_filters_by_status_and_label(alice: Client) -> None:
    first = alice.create(labels={"job": "a"})
    second = alice.create(labels={"job": "b"})
    try:
        alice.stop(second.id)
        ids = lambda **kw: {w.id for w in alice.list(**kw)}  # noqa: E731
        assert {first.id, second.id} <= ids()
        assert ids(labels={"job": "a"}) & {first.id, second.id} == {first.id}
        assert second.id in ids(status="stopped") and first.id not in ids(status="stopped")
    finally:
        alice.delete(first.id)
        alice.delete(second.id)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"memory": "4Q"}, "not a size"),
        ({"memory": "1M"}, "at least"),
        ({"cpu": -1}, "greater than 0"),
        ({"disk": -5}, "positive"),
        ({"ttl_days": -1}, "greater than 0"),
        ({"env": {"1BAD": "x"}}, "must match"),
        ({"labels": {"bad key": "x"}}, "pattern"),
        ({"provider": "vmware"}, "gvisor"),
        ({"surprise": 1}, "not permitted"),
    ],
)
def test_bad_create_requests_get_clear_422(server: Server, body: dict[str, object], fragment: str) -> None:
    response = httpx.post(
        f"{server.url}/api/v1/workspaces", json=body, headers={"Authorization": "Bearer alice-key-0123456789abcdef"}
    )
    assert response.status_code == 422, response.text
    assert fragment in json.dumps(response.json()["detail"])


def test_bad_requests_leave_nothing_behind(
    alice: Client, workspace: WorkspaceOut, docker_client: docker.DockerClient
) -> None:
    before = len(docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL}))
    with pytest.raises(APIError) as unknown_image:
        alice.create(image="agentbox/no-such-image:1")
    assert unknown_image.value.status_code == 400 and "no-such-image" in unknown_image.value.detail
    assert len(docker_client.containers.list(all=True, filters={"label": WORKSPACE_LABEL})) == before
    ws = workspace.id
    for call, status in [
        (lambda: alice.get("ws-doesnotexist"), 404),
        (lambda: alice.exec(ws, ""), 422),
        (lambda: alice.exec(ws, []), 422),
        (lambda: alice.exec(ws, "true", timeout=-1), 422),
        (lambda: alice.exec(ws, "true", cwd="relative"), 422),
        (lambda: alice.read_file(ws, "relative/path"), 422),
        (lambda: alice.write_file(ws, "/workspace/x", b"x", mode="999"), 422),
    ]:
        with pytest.raises(APIError) as error:
            call()
        assert error.value.status_code == status, error.value.detail
        assert error.value.detail
    response = httpx.post(
        str(alice._http.base_url).rstrip("/") + "/workspaces",
        content=b"{not json",
        headers={**alice._http.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_missing_cwd_is_a_clear_error(alice: Client, workspace: WorkspaceOut) -> None:
    with pytest.raises(APIError) as error:
        alice.exec(workspace.id, "true", cwd="/no/such/dir")
    assert error.value.status_code == 400 and "/no/such/dir" in error.value.detail


def test_busybox_image_works_too(alice: Client, busybox_image: str) -> None:
    created = alice.create(image=busybox_image)
    try:
        assert alice.exec(created.id, "echo hi from busybox").stdout == "hi from busybox\n"
        alice.write_file(created.id, "/workspace/a.txt", b"A")
        assert alice.read_file(created.id, "/workspace/a.txt") == b"A"
    finally:
        alice.delete(created.id)


def test_gvisor_workspace_has_working_networking(alice: Client, docker_client: docker.DockerClient) -> None:
    """runsc is registered with arguments that give its workloads a real network (see docs/runtime.md)."""
    ws = alice.create().id
    try:
        (container,) = docker_client.containers.list(filters={"label": f"{WORKSPACE_LABEL}={ws}"})
        address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        assert address
        alice.exec(
            ws,
            "echo served-from-gvisor > /workspace/index.html; "
            "python3 -m http.server 8081 --bind 0.0.0.0 --directory /workspace >/dev/null 2>&1 &",
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://{address}:8081/index.html", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"nothing serves on {address}:8081; in the workspace: {alice.exec(ws, 'ps -ef').stdout}"
                    ) from None
                time.sleep(0.2)
        assert response.text == "served-from-gvisor\n"
    finally:
        alice.delete(ws)
