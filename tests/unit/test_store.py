from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from agentbox.db.models import Base, Status, Workspace
from agentbox.db.store import Store


def make_workspace(workspace_id: str, owner: str = "alice", status: Status = Status.RUNNING) -> Workspace:
    return Workspace(
        id=workspace_id,
        owner=owner,
        provider="gvisor",
        runtime="runsc",
        status=status.value,
        image="img",
        cpu=1.0,
        memory=5 << 30,
        disk=10 << 30,
        pids_limit=512,
        ephemeral=True,
        ttl_days=1.0,
        env={"A": "1"},
        labels={"k": "v"},
        network="",
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )


def test_migrations_match_the_models(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    store.migrate()  # idempotent
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_rows_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'db.sqlite'}"
    first = Store(url)
    first.migrate()
    first.add(make_workspace("ws-1"), "created")
    first.add(make_workspace("ws-2", status=Status.STOPPED), "created")
    first.add(make_workspace("ws-3", owner="bob"), "created")
    first.update("ws-1", "started", provider_ref="abc")
    first.close()

    second = Store(url)
    second.migrate()
    row = second.get("ws-1")
    assert row is not None and row.provider_ref == "abc" and row.memory == 5 << 30
    assert row.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert row.env == {"A": "1"} and row.labels == {"k": "v"}
    assert [w.id for w in second.find(owner="alice")] == ["ws-1", "ws-2"]
    assert second.count_active() == 2
    assert [e.kind for e in second.events("ws-1")] == ["created", "started"]
