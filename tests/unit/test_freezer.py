"""Finding and driving a container's cgroup freezer, on v1 and v2 layouts laid out in a directory as the kernel
shows them (the integration suite's provider contract freezes real gVisor sandboxes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentbox.errors import ProviderError
from agentbox.providers.docker.freezer import CgroupFreezer, cgroup_freezing, container_freezer

ID = "0123abcd" * 8


def v1_host(root: Path, name: str = f"docker/{ID}") -> Path:
    directory = root / "freezer" / name
    directory.mkdir(parents=True)
    (directory / "freezer.state").write_text("THAWED\n")
    return directory


def v2_host(root: Path, name: str = f"system.slice/docker-{ID}.scope") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "cgroup.freeze").write_text("0\n")
    (directory / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    return directory


def test_the_freezer_is_found_under_either_version_and_driver(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    assert container_freezer(ID, root=v1) is None and not cgroup_freezing(v1)
    assert container_freezer(ID, root=v1_host(v1).parents[2]) == CgroupFreezer(1, v1 / "freezer" / "docker" / ID)
    assert cgroup_freezing(v1)
    assert container_freezer(ID, root=v2_host(v2).parents[1]) == CgroupFreezer(
        2, v2 / f"system.slice/docker-{ID}.scope"
    )
    assert cgroup_freezing(v2)
    parented = tmp_path / "parented"
    v1_host(parented, f"agents/{ID}")
    assert container_freezer(ID, "/agents", root=parented) == CgroupFreezer(1, parented / "freezer" / "agents" / ID)


def test_v1_freezes_once_the_kernel_says_frozen_and_thaws(tmp_path: Path) -> None:
    directory = v1_host(tmp_path)
    freezer = CgroupFreezer(1, directory)
    freezer.freeze()  # a plain file reads back what was written, as a freezer that froze at once does
    assert (directory / "freezer.state").read_text() == "FROZEN" and freezer.frozen()
    freezer.thaw()
    assert (directory / "freezer.state").read_text() == "THAWED" and not freezer.frozen()


def test_v2_waits_for_frozen_in_its_events_and_a_freeze_that_never_settles_is_undone(tmp_path: Path) -> None:
    directory = v2_host(tmp_path)
    freezer = CgroupFreezer(2, directory)
    with pytest.raises(ProviderError) as stuck:
        freezer.freeze(patience=0.05)  # nothing here turns cgroup.events to "frozen 1"
    assert "left running" in stuck.value.detail
    assert (directory / "cgroup.freeze").read_text() == "0"
    (directory / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    freezer.freeze()
    assert (directory / "cgroup.freeze").read_text() == "1" and freezer.frozen()


def test_an_attempt_that_does_not_settle_is_undone_and_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = v1_host(tmp_path)
    writes: list[str] = []
    real_write = CgroupFreezer._write

    def write(self: CgroupFreezer, frozen: bool) -> None:
        writes.append("FROZEN" if frozen else "THAWED")
        real_write(self, frozen)

    # The kernel that settles only the second freeze: the first stays FREEZING until it is undone.
    monkeypatch.setattr(CgroupFreezer, "_write", write)
    monkeypatch.setattr(CgroupFreezer, "frozen", lambda self: writes.count("FROZEN") > 1)
    CgroupFreezer(1, directory).freeze(patience=5, attempt=0.05)
    assert writes == ["FROZEN", "THAWED", "FROZEN"]
    assert (directory / "freezer.state").read_text() == "FROZEN"


def test_a_freeze_that_never_settles_names_the_tasks_that_did_not_stop(tmp_path: Path) -> None:
    directory = v2_host(tmp_path)
    (directory / "cgroup.threads").write_text(f"{os.getpid()}\n999999999\n")  # this test's process; one gone
    with pytest.raises(ProviderError) as stuck:
        CgroupFreezer(2, directory).freeze(patience=0.1, attempt=0.03)
    wchan = Path(f"/proc/{os.getpid()}/wchan").read_text().strip() or "-"
    # This process runs (R) while it reads its own state: not stopped by any freezer.
    assert f"1 in {wchan} (R)" in stuck.value.detail and "left running" in stuck.value.detail
    assert (directory / "cgroup.freeze").read_text() == "0"
