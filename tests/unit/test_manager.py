"""The manager over in-memory fake providers: no Docker, no root (tests/fake_provider.py)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox.config import load_settings
from agentbox.db.models import Status, Volume
from agentbox.db.store import Store
from agentbox.errors import BadRequest, NotFound, ProviderUnavailable
from agentbox.providers.base import Capabilities
from agentbox.wire.domain import Command, NewWorkspace
from agentbox.wire.network import AllowList
from agentbox.workspaces import reconcile
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.reconcile import Reconciler
from tests.fake_provider import FakeProvider

# Like E2B: no allow lists (agentbox's firewall cannot reach it), no stop/start, no archives.
LIMITED = Capabilities(
    runtime="limited", isolation="elsewhere", archives=False, stop_start=False, network_policies=frozenset({"egress"})
)


@pytest.fixture
def providers() -> dict[str, FakeProvider]:
    return {"gvisor": FakeProvider("gvisor"), "e2b": FakeProvider("e2b", capabilities=LIMITED)}


@pytest.fixture
def manager(tmp_path: Path, providers: dict[str, FakeProvider]) -> Iterator[WorkspaceManager]:
    settings = load_settings(ENABLE_AGENT_WORKSPACES="true", WORKSPACE_DATA_DIR=str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    yield WorkspaceManager(settings, store, providers)
    store.engine.dispose()


def test_a_workspace_lives_its_life_through_the_provider(
    manager: WorkspaceManager, providers: dict[str, FakeProvider]
) -> None:
    workspace = manager.create("alice", NewWorkspace())
    assert workspace.status == Status.RUNNING and workspace.runtime == "fake"
    result = manager.use("alice", workspace.id).exec(Command(argv=["/bin/sh", "-c", "echo hi; exit 4"]))
    assert (result.exit_code, result.stdout) == (4, "hi\n")
    assert manager.stop("alice", workspace.id).status == Status.STOPPED
    assert manager.start("alice", workspace.id).status == Status.RUNNING
    manager.delete("alice", workspace.id)
    assert providers["gvisor"].sandboxes == {}
    assert [call for call, _ in providers["gvisor"].calls] == ["create", "stop", "start", "destroy"]


def test_what_a_provider_cannot_enforce_is_refused_not_weakened(
    manager: WorkspaceManager, providers: dict[str, FakeProvider]
) -> None:
    for network in ("none", AllowList(allow=["203.0.113.7"])):
        with pytest.raises(BadRequest) as refused:
            manager.create("alice", NewWorkspace(provider="e2b", network=network))
        assert "the e2b provider cannot enforce it (it can: egress)" in refused.value.detail
    assert providers["e2b"].sandboxes == {}  # nothing was made for a refused request

    workspace = manager.create("alice", NewWorkspace(provider="e2b"))
    with pytest.raises(BadRequest) as no_stop:
        manager.stop("alice", workspace.id)
    assert "cannot be stopped" in no_stop.value.detail
    archive = io.BytesIO()
    tarfile.open(fileobj=archive, mode="w").close()
    with pytest.raises(BadRequest) as no_archives:
        manager.use("alice", workspace.id).write_archive("/workspace", [archive.getvalue()])
    assert "files endpoint" in no_archives.value.detail
    assert manager.get("alice", workspace.id).status == Status.RUNNING


class Unanswering(FakeProvider):
    """A provider whose engine does not answer removals in time until `answering`."""

    answering = False

    def destroy(self, ref: str) -> None:
        if not self.answering:
            self.calls.append(("destroy", ref))
            raise ProviderUnavailable("removing the workspace: the engine did not answer in time")
        super().destroy(ref)


def test_a_delete_the_provider_does_not_answer_in_time_is_a_delete_all_the_same(tmp_path: Path) -> None:
    provider = Unanswering("gvisor")
    settings = load_settings(ENABLE_AGENT_WORKSPACES="true", WORKSPACE_DATA_DIR=str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    try:
        manager = WorkspaceManager(settings, store, {"gvisor": provider})
        workspace = manager.create("alice", NewWorkspace())
        with pytest.raises(ProviderUnavailable) as late:
            manager.delete("alice", workspace.id)
        assert late.value.status_code == 503
        assert f"workspace {workspace.id} is deleted" in late.value.detail
        assert "did not answer in time" in late.value.detail and "answers 404" in late.value.detail
        with pytest.raises(NotFound):  # what the answer said: deleted, as a second DELETE finds
            manager.delete("alice", workspace.id)
        assert manager.find("alice") == []
        assert len(provider.sandboxes) == 1  # the provider has not removed it yet

        # Its record gone, the sandbox is an orphan, which reconciliation removes once the provider answers.
        provider.answering = True
        Reconciler(store, {"gvisor": provider}, None, manager.metrics).run()
        assert provider.sandboxes == {}
        record = store.get(workspace.id)
        assert record is not None and record.status == Status.DELETED
    finally:
        store.engine.dispose()


class _Leader:
    """A replica that leads while another is alive (so nothing found unnamed can be taken for a crash's at once)."""

    id = "r1"

    def leads(self) -> bool:
        return True

    def live(self) -> set[str]:
        return {"r1", "r2"}

    def others_alive(self) -> bool:
        return True


def test_storage_no_record_names_goes_once_it_stayed_so_or_at_a_lone_start(
    manager: WorkspaceManager, providers: dict[str, FakeProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = providers["gvisor"]
    provider.volumes |= {"vol-named": 1 << 20, "vol-stray": 1 << 20}
    provider.snapshots |= {"snap-stray": {}}
    with manager.store.session() as session:
        session.add(Volume(id="vol-named", owner="alice", name="data", size=1 << 20))
    leader = Reconciler(manager.store, providers, None, manager.metrics, _Leader())  # type: ignore[arg-type]
    leader.run()  # another replica may be making them: their rows may come
    assert set(provider.volumes) == {"vol-named", "vol-stray"} and set(provider.snapshots) == {"snap-stray"}
    monkeypatch.setattr(reconcile, "STRAY_GRACE", 0.0)  # as if they had stayed unnamed for the grace
    leader.run()
    assert set(provider.volumes) == {"vol-named"} and provider.snapshots == {}

    provider.volumes["vol-stray"] = 1 << 20
    Reconciler(manager.store, providers, None, manager.metrics).run(startup=True)  # the only server's start
    assert set(provider.volumes) == {"vol-named"}
