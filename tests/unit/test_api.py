"""The HTTP API, end to end in-process: the real app and manager over fake providers; no Docker, no root.

Requests go through the typed client, as a user's would, handed to the app by Starlette's
TestClient (which also runs the app's lifespan).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from agentbox.client import APIError, Client
from agentbox.db.models import Status
from agentbox.db.store import Store
from agentbox.providers.base import Capabilities
from agentbox.wire.commands import ExitEvent, OutputEvent
from agentbox.wire.files import DirListing, WriteResult
from agentbox.workspaces.replicas import Replica
from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app

# Like E2B: it cannot stop and start a workspace.
NO_STOP = Capabilities(runtime="limited", isolation="elsewhere", stop_start=False)


class InProcess(httpx.BaseTransport):
    """Hands each request of the typed client to the app, through Starlette's TestClient."""

    def __init__(self, app: TestClient) -> None:
        self.app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Handed over in parts: with httpx2 installed (the mcp SDK needs it) the TestClient is an
        # httpx2 client, which cannot send httpx's requests. It frames the body itself.
        framing = ("content-length", "transfer-encoding")
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in framing]
        answer = self.app.request(request.method, str(request.url), headers=headers, content=request.read())
        return httpx.Response(answer.status_code, headers=answer.headers.multi_items(), content=answer.content)


@pytest.fixture
def providers() -> dict[str, FakeProvider]:
    return {"gvisor": FakeProvider("gvisor"), "e2b": FakeProvider("e2b", capabilities=NO_STOP)}


def serve(tmp_path: Path, providers: dict[str, FakeProvider] | None) -> Iterator[TestClient]:
    """The app over a started service: a manager over `providers`, or none (workspaces disabled)."""
    with TestClient(build_app(tmp_path, providers)) as app:
        yield app


@pytest.fixture
def app(tmp_path: Path, providers: dict[str, FakeProvider]) -> Iterator[TestClient]:
    yield from serve(tmp_path, providers)


def client(app: TestClient, api_key: str | None) -> Client:
    return Client("http://testserver", api_key, transport=InProcess(app))


@pytest.fixture
def alice(app: TestClient) -> Iterator[Client]:
    with client(app, KEYS["alice"]) as alice:
        yield alice


@pytest.fixture
def bob(app: TestClient) -> Iterator[Client]:
    with client(app, KEYS["bob"]) as bob:
        yield bob


def refused(call: Callable[[], object]) -> APIError:
    """The APIError that `call()` raises."""
    with pytest.raises(APIError) as error:
        call()
    return error.value


def test_a_workspace_is_created_found_and_deleted(alice: Client, providers: dict[str, FakeProvider]) -> None:
    created = alice.create(labels={"task": "42"})
    assert (created.owner, created.provider, created.runtime) == ("alice", "gvisor", "fake")
    assert created.status == Status.RUNNING and created.labels == {"task": "42"} and created.network == "egress"
    assert created.expires_at is not None and created.expires_at > created.created_at
    assert alice.get(created.id) == created
    other = alice.create()
    assert [w.id for w in alice.list()] == [created.id, other.id]
    assert [w.id for w in alice.list(labels={"task": "42"})] == [created.id]
    assert {sandbox.id for sandbox in providers["gvisor"].sandboxes.values()} == {created.id, other.id}

    # No body at all, as `make run` suggests trying with curl: every default.
    bare = alice._http.post("/workspaces")
    assert bare.status_code == 201 and bare.json()["network"] == "egress"
    alice.delete(bare.json()["id"])
    assert refused(lambda: alice._call("POST", "/workspaces", content=b"{")).status_code == 422  # a broken one still is
    # Running one of the helper's own subcommands is agentbox's alone (its watchers): no client asks for it.
    internal = {"command": "watch /", "helper_subcommand": True}
    assert refused(lambda: alice._call("POST", f"/workspaces/{other.id}/processes", json=internal)).status_code == 422

    alice.delete(created.id)
    gone = refused(lambda: alice.get(created.id))
    assert gone.status_code == 404 and created.id in gone.detail
    assert [w.id for w in alice.list()] == [other.id]
    assert len(providers["gvisor"].sandboxes) == 1  # the deleted one's sandbox was destroyed


def test_a_request_without_a_valid_key_is_401_and_says_where_keys_come_from(app: TestClient) -> None:
    with client(app, None) as anonymous, client(app, "not-a-key") as stranger:
        missing = refused(anonymous.list)
        wrong = refused(stranger.create)
    assert missing.status_code == 401 and "missing API key" in missing.detail
    assert wrong.status_code == 401 and "WORKSPACE_API_KEYS" in wrong.detail
    assert app.get("/api/v1/workspaces").headers["WWW-Authenticate"] == "Bearer"
    assert app.get("/metrics").status_code == 401


def test_someone_elses_workspace_is_not_found(alice: Client, bob: Client) -> None:
    workspace = alice.create()
    for attempt in (
        lambda: bob.get(workspace.id),
        lambda: bob.exec(workspace.id, "true"),
        lambda: bob.read_file(workspace.id, "/workspace/x"),
        lambda: bob.stop(workspace.id),
        lambda: bob.delete(workspace.id),
    ):
        assert refused(attempt).status_code == 404
    assert bob.list() == []
    assert alice.get(workspace.id).status == Status.RUNNING


def test_exec_returns_the_exit_code_and_the_output(alice: Client) -> None:
    workspace = alice.create()
    result = alice.exec(workspace.id, "echo out; cat /missing; exit 3")
    assert (result.exit_code, result.stdout, result.timed_out) == (3, "out\n", False)
    assert result.stderr == "cat: /missing: No such file or directory\n"
    assert alice.exec(workspace.id, ["echo", "a b"]).stdout == "a b\n"  # an argv list, not a shell line


def test_exec_stream_yields_the_output_then_the_exit(alice: Client) -> None:
    workspace = alice.create()
    events = list(alice.exec_stream(workspace.id, "echo one; exit 4"))
    assert events[0] == OutputEvent(stream="stdout", data="one\n")
    assert events[1:] == [
        ExitEvent(
            exit_code=4, timed_out=False, duration_ms=0, signal=None, stdout_truncated=False, stderr_truncated=False
        )
    ]


def test_a_file_written_reads_back_and_shows_in_its_directory(alice: Client) -> None:
    workspace = alice.create()
    written = alice.write_file(workspace.id, "/workspace/notes.txt", b"kept\n")
    assert written == WriteResult(path="/workspace/notes.txt", size=5)
    assert alice.read_file(workspace.id, "/workspace/notes.txt") == b"kept\n"
    assert alice.exec(workspace.id, "cat /workspace/notes.txt").stdout == "kept\n"
    listing = alice.read_path(workspace.id, "/workspace")
    assert isinstance(listing, DirListing) and listing.path == "/workspace"
    assert [(e.name, e.type, e.size, e.mode) for e in listing.entries] == [("notes.txt", "file", 5, "644")]
    missing = refused(lambda: alice.read_file(workspace.id, "/workspace/nope"))
    assert missing.status_code == 404 and "/workspace/nope" in missing.detail


def test_a_stopped_workspace_runs_nothing_until_started(alice: Client) -> None:
    workspace = alice.create()
    assert alice.stop(workspace.id).status == Status.STOPPED
    stopped = refused(lambda: alice.exec(workspace.id, "true"))
    assert stopped.status_code == 409 and f"/api/v1/workspaces/{workspace.id}/start" in stopped.detail
    assert refused(lambda: list(alice.exec_stream(workspace.id, "true"))).status_code == 409
    assert alice.start(workspace.id).status == Status.RUNNING
    assert alice.exec(workspace.id, "true").exit_code == 0


def test_a_provider_that_cannot_stop_says_so(alice: Client) -> None:
    workspace = alice.create(provider="e2b")
    refusal = refused(lambda: alice.stop(workspace.id))
    assert refusal.status_code == 400 and "cannot be stopped" in refusal.detail
    assert refused(lambda: alice.pause(workspace.id)).status_code == 400
    assert alice.get(workspace.id).status == Status.RUNNING


def test_a_pause_says_whether_memory_was_kept_and_start_resumes(alice: Client) -> None:
    workspace = alice.create()
    assert workspace.memory_kept is None
    paused = alice.pause(workspace.id)
    # A provider that cannot checkpoint (this fake, like runc) keeps the files only.
    assert (paused.status, paused.memory_kept) == (Status.STOPPED, False)
    assert alice.start(workspace.id).status == Status.RUNNING
    assert alice.get(workspace.id).memory_kept is False


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.create(memory="4Q"), ["body", "memory"]),
        (lambda c: c.create(memory="996559397047834M"), ["body", "memory"]),  # past 64 bits: was a 500
        (lambda c: c.create(surprise=1), ["body", "surprise"]),
        (lambda c: c.exec(c.create().id, "true", cwd="relative"), ["body", "cwd"]),
        (lambda c: c.read_file(c.create().id, "relative"), ["query", "path"]),
        (lambda c: c.write_file(c.create().id, "/workspace/x", b"x", mode="999"), ["query", "mode"]),
    ],
)
def test_bad_input_is_a_422_naming_the_field_without_repeating_the_value(
    alice: Client, call: Callable[[Client], object], field: list[str]
) -> None:
    error = refused(lambda: call(alice))
    assert error.status_code == 422
    (problem,) = error.detail
    assert not isinstance(problem, str) and problem.loc == field and problem.msg
    assert not problem.model_extra  # nothing but where and what: not the value, which may be a secret


def test_a_malformed_label_filter_is_a_422(alice: Client) -> None:
    error = refused(lambda: alice.list(labels={"": "x"}))
    assert error.status_code == 422 and "key=value" in error.detail


def test_health_lists_the_providers(app: TestClient) -> None:
    with client(app, None) as anonymous:  # health needs no key
        health = anonymous.health()
    assert health.status == "ok" and health.workspaces_enabled is True
    assert health.providers == ["e2b", "gvisor"]
    # What each can do, so that a client can choose before it asks (the e2b fake cannot stop).
    assert health.capabilities["e2b"].stop_start is False and health.capabilities["gvisor"].stop_start is True
    assert health.capabilities["gvisor"].network_policies == ["allow", "egress", "none"]
    assert health.runtime is None and "no Docker provider" in health.runtime_reason


def test_health_names_the_replicas_only_to_a_caller_with_a_key(app: TestClient, bob: Client) -> None:
    service = app.app.state.service  # type: ignore[attr-defined]
    replica = Replica(service.store, service.settings.replica_id, "127.0.0.1:8000")
    replica.register()
    replica.tick()  # alone on SQLite: it leads
    service.replica = replica
    with client(app, None) as anonymous:
        stranger = anonymous.health()
    # A load balancer's check gets the status; which replicas there are and which leads, nobody without a key.
    assert stranger.status == "ok" and (stranger.replica, stranger.leader, stranger.replicas) == (None, None, [])
    raw = app.get("/api/v1/health").text
    assert replica.id not in raw
    keyed = bob.health()  # any owner's key, no admin needed
    assert (keyed.replica, keyed.leader, keyed.replicas) == (replica.id, replica.id, [replica.id])
    with client(app, "wrong-key-0123456789abcdef") as guesser:
        wrong = refused(guesser.health)
    assert wrong.status_code == 401 and "invalid API key" in wrong.detail  # no quieter answer to test keys on


def test_a_server_with_workspaces_disabled_says_so_before_asking_for_a_key(tmp_path: Path) -> None:
    for app in serve(tmp_path, providers=None):
        with client(app, None) as anonymous:
            disabled = refused(anonymous.list)
            health = anonymous.health()
    assert disabled.status_code == 404 and "ENABLE_AGENT_WORKSPACES=true" in disabled.detail
    assert health.workspaces_enabled is False and health.providers == []


def test_every_endpoint_is_described_in_the_docs(app: TestClient) -> None:
    operations = [
        (method, path, operation)
        for path, methods in app.get("/openapi.json").json()["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) == 69  # 64, and the five template operations (issue 30)
    undescribed = [(method, path) for method, path, operation in operations if not operation.get("description")]
    assert undescribed == []


def test_a_provider_without_processes_or_watching_refuses_them_by_name(alice: Client) -> None:
    workspace = alice.create()  # the fake provider has neither
    started = refused(lambda: alice.start_process(workspace.id, ["true"]))
    assert started.status_code == 400 and "gvisor" in started.detail
    listed = refused(lambda: alice.processes(workspace.id))
    assert listed.status_code == 400
    watched = refused(lambda: alice.watch(workspace.id, "/workspace"))
    assert watched.status_code == 400 and "watch" in watched.detail


def test_providers_say_what_each_can_do_and_how_many_workspaces_it_runs(
    app: TestClient, alice: Client, bob: Client
) -> None:
    alice.create()
    bob.create()
    alice.create(provider="e2b")
    found = {p.name: p for p in alice.providers()}
    assert set(found) == {"gvisor", "docker", "e2b"}  # the default WORKSPACE_PROVIDERS
    assert not found["docker"].available and found["docker"].reason  # this test's server has none
    assert (found["gvisor"].available, found["gvisor"].active, found["e2b"].active) == (True, 2, 1)
    assert found["gvisor"].capabilities is not None and found["gvisor"].capabilities.runtime == "fake"
    assert found["e2b"].capabilities is not None and not found["e2b"].capabilities.stop_start
    with client(app, None) as anonymous:
        assert refused(anonymous.providers).status_code == 401


def test_a_provider_that_cannot_be_used_here_says_why(tmp_path: Path) -> None:
    unavailable = {"e2b": "E2B_API_KEY is not set: set it to your E2B key"}
    built = build_app(tmp_path, {"gvisor": FakeProvider("gvisor")}, unavailable, WORKSPACE_PROVIDERS="gvisor,e2b")
    with TestClient(built) as app, client(app, KEYS["alice"]) as alice:
        e2b = {p.name: p for p in alice.providers()}["e2b"]
    assert (e2b.available, e2b.reason, e2b.capabilities) == (False, unavailable["e2b"], None)


def test_using_an_ephemeral_workspace_slides_its_expiry(app: TestClient, alice: Client) -> None:
    created = alice.create(ttl_days=1)
    assert created.last_used_at is None
    alice.exec(created.id, ["true"])
    used = alice.get(created.id)
    assert used.last_used_at is not None and used.expires_at is not None and created.expires_at is not None
    assert used.expires_at > created.expires_at  # a day from its use, not from its creation
    # Back-dated as if a day had passed: the next use moves it on again; an idle one would have expired.
    store: Store = app.app.state.service.store
    day_ago = used.last_used_at - timedelta(days=1)
    store.update(created.id, last_used_at=day_ago, expires_at=used.expires_at - timedelta(days=1))
    alice.write_file(created.id, "/workspace/a.txt", b"a")  # any use: files too
    again = alice.get(created.id)
    assert again.last_used_at is not None and again.last_used_at > day_ago
    assert again.expires_at is not None and again.expires_at >= used.expires_at
    kept = alice.create(ephemeral=False)
    alice.exec(kept.id, ["true"])
    assert alice.get(kept.id).expires_at is None  # a kept workspace has no expiry to slide


def test_the_audit_trail_records_each_call_without_contents_or_env_values(alice: Client, bob: Client) -> None:
    workspace = alice.create()
    alice.exec(workspace.id, "echo hi", env={"SECRET_TOKEN": "hunter2"})
    alice.write_tool(workspace.id, "/workspace/notes.txt", "the launch code is 0000")
    refused(lambda: bob.exec(workspace.id, "true"))
    alice.write_file(workspace.id, "/workspace/blob.bin", b"\0binary")
    alice.get(workspace.id)  # a look at its state (a dashboard's every few seconds): not a call on it
    refused(lambda: bob.get(workspace.id))  # but another owner's look is

    page = alice.audit(workspace.id)
    # Another owner's attempts are not written into alice's trail (it is hers, not a stranger's notepad).
    assert [(r.owner, r.action, r.status) for r in page.records] == [
        ("alice", "PUT /files", 200),
        ("alice", "POST /tools/write", 200),
        ("alice", "POST /exec", 200),
    ]
    assert page.records[2].arguments == {"command": "echo hi", "env": ["SECRET_TOKEN"]}
    assert page.records[1].arguments == {"path": "/workspace/notes.txt", "content": "<23 characters>"}
    assert page.records[0].arguments == {"path": "/workspace/blob.bin", "mode": "644"}  # and not its bytes
    assert all(r.duration_ms >= 0 for r in page.records) and page.next_before is None
    kept = page.model_dump_json()
    assert "hunter2" not in kept and "launch code" not in kept

    first = alice.audit(workspace.id, limit=2)
    assert first.next_before == first.records[-1].id
    rest = alice.audit(workspace.id, limit=2, before=first.next_before)
    assert [r.action for r in rest.records] == ["POST /exec"] and rest.next_before is None
    assert refused(lambda: bob.audit(workspace.id)).status_code == 404


def test_the_dashboard_is_served_from_the_package_under_its_policy(app: TestClient) -> None:
    root = app.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    page = app.get("/ui/")
    assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = app.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "frame-ancestors 'none'" in script.headers["content-security-policy"]
    assert app.get("/ui/nothing.js").status_code == 404
