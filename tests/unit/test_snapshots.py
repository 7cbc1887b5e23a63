"""Snapshots and forks through the API, over fake providers (tests/fake_provider.py: a snapshot is a copy of a
sandbox's files): names, quotas, paging, owners, a create's defaults from a snapshot, forks member by member, and
what a provider that cannot snapshot answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agentbox.providers.base import Capabilities
from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app

SNAPSHOTTING = Capabilities(
    runtime="fake",
    isolation="none (a unit-test fake)",
    snapshots=True,
    network_policies=frozenset({"egress", "none"}),
)
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}


@pytest.fixture
def providers() -> dict[str, FakeProvider]:
    return {"gvisor": FakeProvider("gvisor", capabilities=SNAPSHOTTING), "e2b": FakeProvider("e2b")}


@pytest.fixture
def app(tmp_path: Path, providers: dict[str, FakeProvider]) -> Iterator[TestClient]:
    built = build_app(tmp_path, providers, WORKSPACE_MAX_SNAPSHOTS="3", WORKSPACE_MAX_CONCURRENT="4")
    with TestClient(built) as client:
        yield client


def create(app: TestClient, **body: Any) -> dict[str, Any]:
    answer = app.post("/api/v1/workspaces", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def write(app: TestClient, workspace_id: str, path: str, data: bytes) -> None:
    answer = app.put(f"/api/v1/workspaces/{workspace_id}/files", params={"path": path}, content=data, headers=ALICE)
    assert answer.status_code in (200, 201), answer.text


def read(app: TestClient, workspace_id: str, path: str) -> bytes | None:
    answer = app.get(f"/api/v1/workspaces/{workspace_id}/files", params={"path": path}, headers=ALICE)
    return answer.content if answer.status_code == 200 else None


def snapshot(app: TestClient, workspace_id: str, **body: Any) -> dict[str, Any]:
    answer = app.post(f"/api/v1/workspaces/{workspace_id}/snapshots", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_a_workspace_from_a_snapshot_has_its_files_and_spec_and_they_diverge(
    app: TestClient, providers: dict[str, FakeProvider]
) -> None:
    source = create(app, memory="256M", cpu=0.5, network="none")
    write(app, source["id"], "/workspace/a.txt", b"before")
    taken = snapshot(app, source["id"], name="base")
    assert taken["id"].startswith("snap-") and taken["name"] == "base" and taken["workspace_id"] == source["id"]
    assert taken["memory_kept"] is False and "runtime could not checkpoint" in taken["memory_note"]
    assert taken["size"] == len(b"before") and taken["memory"] == 256 << 20 and taken["cpu"] == 0.5
    write(app, source["id"], "/workspace/a.txt", b"after")  # not in the snapshot

    for ref in (taken["id"], "base"):
        child = create(app, snapshot=ref)
        assert (child["memory"], child["cpu"], child["network"]) == ("256M", 0.5, "none")
        assert read(app, child["id"], "/workspace/a.txt") == b"before"
        write(app, child["id"], "/workspace/b.txt", b"child's")
        assert read(app, source["id"], "/workspace/b.txt") is None
    assert read(app, source["id"], "/workspace/a.txt") == b"after"
    # What the create says wins over the snapshot's spec; a smaller disk than the snapshot's is refused.
    bigger = create(app, snapshot="base", memory="512M")
    assert bigger["memory"] == "512M"
    smaller = app.post("/api/v1/workspaces", json={"snapshot": "base", "disk": "64M"}, headers=ALICE)
    assert smaller.status_code == 400 and "disk" in smaller.json()["detail"]


def test_snapshots_are_listed_paged_found_by_name_and_deleted(
    app: TestClient, providers: dict[str, FakeProvider]
) -> None:
    first, second = create(app), create(app)
    a = snapshot(app, first["id"], name="one")
    b = snapshot(app, first["id"])
    c = snapshot(app, second["id"], name="two")

    listed = app.get("/api/v1/snapshots", params={"limit": 2}, headers=ALICE).json()
    assert [s["id"] for s in listed["snapshots"]] == [c["id"], b["id"]] and listed["next_before"] == b["id"]
    rest = app.get("/api/v1/snapshots", params={"limit": 2, "before": b["id"]}, headers=ALICE).json()
    assert [s["id"] for s in rest["snapshots"]] == [a["id"]] and rest["next_before"] is None
    of_first = app.get("/api/v1/snapshots", params={"workspace_id": first["id"]}, headers=ALICE).json()
    assert {s["id"] for s in of_first["snapshots"]} == {a["id"], b["id"]}
    named = app.get("/api/v1/snapshots", params={"name": "two"}, headers=ALICE).json()
    assert [s["id"] for s in named["snapshots"]] == [c["id"]]
    assert app.get("/api/v1/snapshots/one", headers=ALICE).json()["id"] == a["id"]

    assert app.delete("/api/v1/snapshots/one", headers=ALICE).status_code == 204
    assert app.delete(f"/api/v1/snapshots/{b['id']}", headers=ALICE).status_code == 204
    assert app.get(f"/api/v1/snapshots/{a['id']}", headers=ALICE).status_code == 404
    assert set(providers["gvisor"].snapshots) == {c["id"]}  # what the provider kept went with them
    # A name freed by a delete can be taken again.
    assert snapshot(app, second["id"], name="one")["name"] == "one"


def test_names_quota_and_bad_input_are_refused_clearly(app: TestClient) -> None:
    workspace = create(app)
    snapshot(app, workspace["id"], name="held")
    again = app.post(f"/api/v1/workspaces/{workspace['id']}/snapshots", json={"name": "held"}, headers=ALICE)
    assert again.status_code == 409 and "held" in again.json()["detail"]
    for bad in ("snap-123", "", "a b", "x" * 65):
        refused = app.post(f"/api/v1/workspaces/{workspace['id']}/snapshots", json={"name": bad}, headers=ALICE)
        assert refused.status_code == 422, bad
    snapshot(app, workspace["id"])
    snapshot(app, workspace["id"])
    over = app.post(f"/api/v1/workspaces/{workspace['id']}/snapshots", headers=ALICE)
    assert over.status_code == 429 and "WORKSPACE_MAX_SNAPSHOTS" in over.json()["detail"]
    unknown = app.post("/api/v1/workspaces", json={"snapshot": "snap-0000"}, headers=ALICE)
    assert unknown.status_code == 404 and "snap-0000" in unknown.json()["detail"]
    for count in (0, 101, "two"):
        fork = app.post(f"/api/v1/workspaces/{workspace['id']}/fork", json={"count": count}, headers=ALICE)
        assert fork.status_code == 422, count
    wrong = app.post("/api/v1/workspaces", json={"snapshot": "held", "provider": "e2b"}, headers=ALICE)
    assert wrong.status_code == 400 and "provider" in wrong.json()["detail"]


def test_another_owner_finds_nothing(app: TestClient) -> None:
    workspace = create(app)
    taken = snapshot(app, workspace["id"], name="mine")
    for ref in (taken["id"], "mine"):
        assert app.get(f"/api/v1/snapshots/{ref}", headers=BOB).status_code == 404
        assert app.delete(f"/api/v1/snapshots/{ref}", headers=BOB).status_code == 404
        assert app.post("/api/v1/workspaces", json={"snapshot": ref}, headers=BOB).status_code == 404
    assert app.get("/api/v1/snapshots", headers=BOB).json()["snapshots"] == []
    assert app.post(f"/api/v1/workspaces/{workspace['id']}/snapshots", headers=BOB).status_code == 404
    assert app.post(f"/api/v1/workspaces/{workspace['id']}/fork", json={"count": 1}, headers=BOB).status_code == 404
    # Bob may use the same name for his own, which is his alone.
    his = app.post("/api/v1/workspaces", json={}, headers=BOB).json()
    assert app.post(f"/api/v1/workspaces/{his['id']}/snapshots", json={"name": "mine"}, headers=BOB).status_code == 201
    assert app.get("/api/v1/snapshots/mine", headers=ALICE).json()["id"] == taken["id"]


def test_a_deleted_source_leaves_its_snapshots_usable_and_a_child_can_be_snapshotted(app: TestClient) -> None:
    source = create(app)
    write(app, source["id"], "/workspace/kept", b"1")
    taken = snapshot(app, source["id"])
    assert app.delete(f"/api/v1/workspaces/{source['id']}", headers=ALICE).status_code == 204
    child = create(app, snapshot=taken["id"])
    write(app, child["id"], "/workspace/more", b"2")
    grandchild = create(app, snapshot=snapshot(app, child["id"])["id"])
    assert (
        read(app, grandchild["id"], "/workspace/kept") == b"1"
        and read(app, grandchild["id"], "/workspace/more") == b"2"
    )


def test_a_fork_makes_each_workspace_on_its_own_and_the_source_goes_on(
    app: TestClient, providers: dict[str, FakeProvider]
) -> None:
    source = create(app)
    write(app, source["id"], "/workspace/state", b"s")
    source = app.get(f"/api/v1/workspaces/{source['id']}", headers=ALICE).json()  # the write slid its expiry
    # The cap is 4 active workspaces: of 5 asked, 3 are made and 2 refused, each said so.
    answer = app.post(f"/api/v1/workspaces/{source['id']}/fork", json={"count": 5}, headers=ALICE)
    assert answer.status_code == 200, answer.text
    fork = answer.json()
    assert fork["source"] == source["id"] and fork["made"] == 3 and fork["snapshot_kept"] is False
    made = [m for m in fork["workspaces"] if m["id"]]
    refused = [m for m in fork["workspaces"] if not m["id"]]
    assert len(made) == 3 and len(refused) == 2
    assert all(m["status_code"] == 429 and "WORKSPACE_MAX_CONCURRENT" in m["error"] for m in refused)
    for member in made:
        assert read(app, member["id"], "/workspace/state") == b"s"
    after = app.get(f"/api/v1/workspaces/{source['id']}", headers=ALICE).json()
    assert after["status"] == "running" and after["expires_at"] == source["expires_at"]
    # Its snapshot went once the workspaces were made; kept when asked.
    assert app.get("/api/v1/snapshots", headers=ALICE).json()["snapshots"] == []
    assert providers["gvisor"].snapshots == {}
    for member in made:
        app.delete(f"/api/v1/workspaces/{member['id']}", headers=ALICE)
    kept = app.post(f"/api/v1/workspaces/{source['id']}/fork", json={"count": 1, "keep_snapshot": True}, headers=ALICE)
    assert kept.json()["snapshot_kept"] is True
    assert [s["id"] for s in app.get("/api/v1/snapshots", headers=ALICE).json()["snapshots"]] == [
        kept.json()["snapshot"]["id"]
    ]


def test_a_provider_that_cannot_snapshot_says_so(app: TestClient) -> None:
    workspace = create(app, provider="e2b")
    for path, body in (("snapshots", {}), ("fork", {"count": 1})):
        answer = app.post(f"/api/v1/workspaces/{workspace['id']}/{path}", json=body, headers=ALICE)
        assert answer.status_code == 400 and "e2b provider cannot snapshot" in answer.json()["detail"]
    providers_answer = app.get("/api/v1/providers", headers=ALICE).json()["providers"]
    offers = {p["name"]: p["capabilities"]["snapshots"] for p in providers_answer if p["available"]}
    assert offers == {"gvisor": True, "e2b": False}
