"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox.db.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite database of the test's own."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The unit suite runs with no Docker engine reachable: a test that reached one by accident would
    pass here and mean nothing on a machine without it, so the engine's address leads nowhere."""
    nowhere = tmp_path_factory.getbasetemp() / "no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{nowhere}")
