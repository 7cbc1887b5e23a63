"""Snapshots of Docker workspaces: a copy of the workspace's disk, taken while nothing writes to it.

A workspace's files all live on its own disk (disks.py): a sparse ext4 image, loop-mounted. A snapshot is a
copy of that image in `<data dir>/snapshots/<snapshot id>/`, made with `cp --reflink=auto --sparse=always`:
a copy-on-write clone where the host's filesystem has them (XFS, btrfs), else a sparse copy that spends only
the blocks the workspace wrote (ext4: holes are skipped by SEEK_DATA, not read). A workspace from the
snapshot starts with a copy of it, the same way, instead of a fresh filesystem.

So that the copy is a consistent filesystem: the workload's own writes are synced from gVisor's side first
(`sync` in the sandbox), the sandbox's cgroup is frozen (freezer.py: nothing in it runs), and the filesystem
itself is frozen (FIFREEZE: the kernel flushes it, journal included, and holds any write) while it is copied;
both are undone whatever happens. Plain-directory disks (no root) are copied as trees, without the freeze.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from agentbox.errors import BadRequest, ProviderError
from agentbox.providers.docker.disks import Disks
from agentbox.providers.docker.freezer import CgroupFreezer

log = logging.getLogger("agentbox.providers.docker.snapshots")

#: The disk image of a snapshot, and the directory of a snapshot's checkpoint (its memory), in its directory.
IMAGE = "disk.img"
TREE = "disk"
CHECKPOINT = "checkpoint"
# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
_NAME = re.compile(r"^snap-[a-z0-9]{1,40}$")
#: How long one copy may take (a snapshot of a large disk on a slow host).
COPY_TIMEOUT = 600


class SnapshotFiles:
    """The snapshots' directories under `root`, made from and into the workspaces' `disks`."""

    def __init__(self, root: Path, disks: Disks) -> None:
        self.root = root
        self.disks = disks

    def directory(self, snapshot_id: str) -> Path:
        if not _NAME.match(snapshot_id):
            raise ValueError(f"bad snapshot name {snapshot_id!r}")
        return self.root / snapshot_id

    def take(self, snapshot_id: str, disk: str, freezer: CgroupFreezer | None) -> Path:
        """Copy the disk `disk` into the snapshot's directory, `freezer`'s cgroup frozen meanwhile (None: the
        workspace is stopped, or its cgroup not found). Leaves nothing behind on failure."""
        target = self.directory(snapshot_id)
        target.mkdir(parents=True, exist_ok=True)  # the provider may have put its memory there first
        try:
            with _frozen(freezer):
                if self.disks.enforced:
                    with _fs_frozen(self.disks.mountpoint(disk)):
                        _copy(self.disks._image(disk), target / IMAGE)
                else:
                    _copy_tree(self.disks.mountpoint(disk), target / TREE)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def size(self, snapshot_id: str) -> int:
        """The bytes its files really take on the host (allocated blocks, not apparent sizes)."""
        total = 0
        for path in [self.directory(snapshot_id), *self.directory(snapshot_id).rglob("*")]:
            with contextlib.suppress(OSError):
                total += path.lstat().st_blocks * 512
        return total

    def disk_size(self, snapshot_id: str) -> int | None:
        """The size of the disk the snapshot holds (None: a plain-directory disk, of no fixed size)."""
        image = self.directory(snapshot_id) / IMAGE
        return image.stat().st_size if image.is_file() else None

    def lay_disk(self, snapshot_id: str, disk: str, size: int) -> None:
        """Make the disk `disk` (reserved, not yet formatted: `Disks.reserve`) a copy of the snapshot's, grown to
        `size` bytes when that is larger, and mount it. Leaves no disk image behind on failure."""
        source = self.directory(snapshot_id)
        if not source.is_dir():
            raise BadRequest(f"snapshot {snapshot_id} has no files on this host any more: delete it")
        if not self.disks.enforced:
            if (source / TREE).is_dir():
                _copy_tree(source / TREE, self.disks.mountpoint(disk))
            return
        if not (source / IMAGE).is_file():
            raise BadRequest(f"snapshot {snapshot_id} holds no disk image (taken without disk limits): delete it")
        image = self.disks._image(disk)
        try:
            _copy(source / IMAGE, image)
            if size > image.stat().st_size:
                os.truncate(image, size)  # sparse: the new room costs nothing until written
                _run("e2fsck", "-f", "-p", str(image), ok=(0, 1))
                _run("resize2fs", str(image))
            self.disks._mount(disk)
        except BaseException:
            self.disks.destroy(disk)
            raise

    def remove(self, snapshot_id: str) -> None:
        shutil.rmtree(self.directory(snapshot_id), ignore_errors=True)

    def names(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {entry.name for entry in self.root.iterdir() if _NAME.match(entry.name)}


@contextlib.contextmanager
def _frozen(freezer: CgroupFreezer | None) -> Iterator[None]:
    """The cgroup frozen while inside (one that was frozen already, a suspended workspace, stays so)."""
    if freezer is None or freezer.frozen():
        yield
        return
    freezer.freeze()
    try:
        yield
    finally:
        freezer.thaw()


@contextlib.contextmanager
def _fs_frozen(mountpoint: Path) -> Iterator[None]:
    """The filesystem mounted at `mountpoint` frozen (flushed, journal included, writes held) while inside;
    synced only when it cannot be frozen."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            log.debug("FIFREEZE of %s refused (%s): syncing it instead", mountpoint, exc)
            os.sync()
            yield
            return
        try:
            yield
        finally:
            fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


def _copy(source: Path, target: Path) -> None:
    _run("cp", "--reflink=auto", "--sparse=always", str(source), str(target))


def _copy_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _run("cp", "-a", "--reflink=auto", f"{source}/.", str(target))


def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=COPY_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ProviderError(f"snapshot: `{argv[0]}` did not finish in {COPY_TIMEOUT} s") from None
    if result.returncode not in ok:
        raise ProviderError(
            f"snapshot: `{' '.join(argv[:2])}` failed: {result.stderr.strip() or result.returncode}; check the free "
            "space under WORKSPACE_DATA_DIR"
        )
