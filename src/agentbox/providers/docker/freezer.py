"""Freezing a container's host cgroup: a suspended workspace uses no CPU at all.

Every host process of a runsc container (the sandbox, its gofer, systrap's stubs) sits in the
container's cgroup, so freezing that cgroup stops the sandbox whole: an idle systrap sandbox of
this runsc build spins ~30 ms of CPU a second, and none while frozen; a freeze takes ~3 ms and a
thawed sandbox answers its next command as fast as one never frozen (../shared/notes/machine.md).
`docker pause` is no substitute: it goes through runsc, which leaves that spin running.

cgroup v1 (`freezer.state`: FROZEN / THAWED, FREEZING on the way) and v2 (`cgroup.freeze`, with
`frozen 1` in `cgroup.events` once done), under the cgroupfs driver (`docker/<id>`) or systemd's
(`system.slice/docker-<id>.scope`), the layouts `usage.py` reads.

A frozen container is frozen below the engine: the engine still calls it running, an exec into it
waits, and a signal to it (a stop, a forced removal) is held until it is thawed. So whatever acts
on a container thaws it first (`thaw` on a container that is not frozen does nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agentbox.errors import ProviderError
from agentbox.providers.docker.usage import CGROUP_ROOT, cgroup_names

#: How long a freeze may take to settle (a task in the kernel's uninterruptible sleep delays it).
FREEZE_PATIENCE = 5.0


@dataclass(frozen=True)
class CgroupFreezer:
    """The freezer of one container's cgroup: v1's `freezer.state` or v2's `cgroup.freeze`."""

    version: Literal[1, 2]
    directory: Path

    def freeze(self, patience: float = FREEZE_PATIENCE) -> None:
        """Freeze it and return once every task in it is frozen. ProviderError when that takes
        longer than `patience` (it is thawed again: never left half frozen)."""
        self._write(True)
        deadline = time.monotonic() + patience
        while not self.frozen():
            if time.monotonic() > deadline:
                self._write(False)
                raise ProviderError(
                    f"freezing the workspace's cgroup ({self.directory}) did not finish in {patience:g} s: a task "
                    "in it may be stuck in the kernel; it was left running, try again"
                )
            time.sleep(0.001)

    def thaw(self) -> None:
        """Let it run again (nothing when it is not frozen)."""
        self._write(False)

    def frozen(self) -> bool:
        """Whether every task in it is frozen (v1's FREEZING, on the way, is not yet)."""
        if self.version == 1:
            return (self.directory / "freezer.state").read_text().strip() == "FROZEN"
        events = (self.directory / "cgroup.events").read_text().split("\n")
        return "frozen 1" in events

    def _write(self, frozen: bool) -> None:
        if self.version == 1:
            (self.directory / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            (self.directory / "cgroup.freeze").write_text("1" if frozen else "0")


def container_freezer(container_id: str, parent: str = "", root: Path = CGROUP_ROOT) -> CgroupFreezer | None:
    """The freezer of the running container `container_id` (its full id; `parent`: its HostConfig's
    CgroupParent), or None when its cgroup is not found (another layout, or it is not running)."""
    for name in cgroup_names(container_id, parent):
        if (root / name / "cgroup.freeze").is_file():
            return CgroupFreezer(2, root / name)
        if (root / "freezer" / name / "freezer.state").is_file():
            return CgroupFreezer(1, root / "freezer" / name)
    return None


def cgroup_freezing(root: Path = CGROUP_ROOT) -> bool:
    """Whether this host's cgroups can freeze (v1's freezer controller mounted, or v2)."""
    return (root / "freezer").is_dir() or (root / "cgroup.controllers").is_file()
