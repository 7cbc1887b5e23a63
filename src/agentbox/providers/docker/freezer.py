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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agentbox.errors import ProviderError
from agentbox.providers.docker.usage import CGROUP_ROOT, cgroup_names

#: How long a freeze may take to settle (a task in the kernel's uninterruptible sleep delays it).
FREEZE_PATIENCE = 5.0
#: How long one attempt may take before it is undone and made again, in case what holds it up waits on a
#: task already frozen, which the thaw lets finish (seen here once in 50 creates: a freeze right after boot
#: that had not settled in 5 s, under load; bench/crowd.py; its cause is not known).
FREEZE_ATTEMPT = 1.0
FREEZE_RETRY_PAUSE = 0.05
#: Where a task stopped by the freezer waits (its wchan): cgroup v1's, v2's.
FROZEN_WAITS = frozenset({"__refrigerator", "do_freezer_trap"})


@dataclass(frozen=True)
class CgroupFreezer:
    """The freezer of one container's cgroup: v1's `freezer.state` or v2's `cgroup.freeze`."""

    version: Literal[1, 2]
    directory: Path

    def freeze(self, patience: float = FREEZE_PATIENCE, attempt: float = FREEZE_ATTEMPT) -> None:
        """Freeze it and return once every task in it is frozen; an attempt that has not settled within
        `attempt` is undone and made again. ProviderError when none settles within `patience` (it is
        thawed again: never left half frozen), naming the tasks that were not frozen."""
        deadline = time.monotonic() + patience
        while True:
            self._write(True)
            give_up = min(deadline, time.monotonic() + attempt)
            while not self.frozen():
                if time.monotonic() > give_up:
                    break
                time.sleep(0.001)
            else:
                return
            holding = self.unfrozen()
            self._write(False)
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"freezing the workspace's cgroup ({self.directory}) did not finish in {patience:g} s: "
                    f"a task in it did not stop, perhaps stuck in the kernel (its tasks outside the freezer: "
                    f"{', '.join(holding) or 'none found'}); it was left running, try again"
                )
            time.sleep(FREEZE_RETRY_PAUSE)

    def thaw(self) -> None:
        """Let it run again (nothing when it is not frozen)."""
        self._write(False)

    def frozen(self) -> bool:
        """Whether every task in it is frozen (v1's FREEZING, on the way, is not yet)."""
        if self.version == 1:
            return (self.directory / "freezer.state").read_text().strip() == "FROZEN"
        events = (self.directory / "cgroup.events").read_text().split("\n")
        return "frozen 1" in events

    def unfrozen(self) -> list[str]:
        """Its tasks outside the freezer's own wait, counted by where they wait and their state, rarest first:
        `2 in folio_wait_bit_common (D)`. A task asleep where the kernel freezes it in place shows there too,
        in state D like a frozen one (futex and poll waits); a task in R or S is not stopped at all."""
        tasks = self.directory / ("tasks" if self.version == 1 else "cgroup.threads")
        counted: Counter[tuple[str, str]] = Counter()
        for tid in tasks.read_text().split() if tasks.is_file() else []:
            try:
                wchan = Path(f"/proc/{tid}/wchan").read_text().strip() or "-"
                stat = Path(f"/proc/{tid}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if wchan not in FROZEN_WAITS:
                counted[wchan, stat[stat.rindex(")") + 2 :][:1]] += 1
        return [f"{n} in {wchan} ({state})" for (wchan, state), n in sorted(counted.items(), key=lambda i: i[1])]

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
