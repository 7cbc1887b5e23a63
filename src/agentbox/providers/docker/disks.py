"""Per-workspace disks: a file-backed ext4 filesystem of exactly the workspace's disk size.

overlay2 on ext4 has no size quota, and this kernel has neither XFS nor ext4 project
quotas, so a container's writable layer cannot be bounded. Instead every workspace gets
its own filesystem (a sparse image file, loop-mounted on the host) that holds everything
the workload may write: `/workspace`, `/tmp` and the home directory are bind-mounted from
it and the rest of the root filesystem is read-only. Writing past the size fails inside
the workspace with ENOSPC, and the host only ever spends what was really written.

Without root (or without mkfs.ext4) the disks are plain directories and the limit is not
enforced; `Disks.enforced` says which, and the service warns at start-up.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

from agentbox.errors import ProviderError

log = logging.getLogger("agentbox.providers.docker.disks")

#: Subdirectories of each disk and where they appear in the workspace. PROCS holds the helper's
#: background processes (their output counts against the disk like any file).
TMP, HOME, WORKSPACE, PROCS = "tmp", "home", "workspace", "procs"
#: (name, mode, owned by the workspace user)
_SUBDIRS = ((WORKSPACE, 0o755, True), (HOME, 0o755, True), (TMP, 0o1777, False), (PROCS, 0o700, True))
#: A named volume's one directory, the workspace user's, bind-mounted where the workspace asks (its filesystem's
#: root stays root's, with lost+found).
VOLUME_DATA = "data"
VOLUME_SUBDIRS = ((VOLUME_DATA, 0o755, True),)
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class Disks:
    def __init__(
        self,
        root: Path,
        owner: str,
        subdirs: tuple[tuple[str, int, bool], ...] = _SUBDIRS,
        what: str = "workspace disk",
    ) -> None:
        """`subdirs`: the directories each disk starts with (name, mode, owned by `owner`); `what` names its
        disks in errors."""
        self.root = root
        self._subdirs = subdirs
        self.what = what
        uid, _, gid = owner.partition(":")
        self._uid, self._gid = int(uid), int(gid or uid)
        missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool) is None]
        self.enforced = os.geteuid() == 0 and not missing
        self.why_not = (
            ""
            if self.enforced
            else "disk limits need root and mkfs.ext4/mount (e2fsprogs, util-linux): "
            + ("not running as root" if os.geteuid() != 0 else f"missing {', '.join(missing)}")
        )

    def _image(self, name: str) -> Path:
        return self.root / f"{name}.img"

    def mountpoint(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad disk name {name!r}")
        return self.root / name

    def reserve(self, name: str) -> Path:
        """The disk's mount point with its directories, before any filesystem is there.

        Enough for the engine to accept bind mounts from it; `format` then mounts the real
        filesystem over it (bind mounts are resolved when the container starts).
        """
        target = self.mountpoint(name)
        target.mkdir(parents=True, exist_ok=False)
        self._lay_out(target)
        return target

    def format(self, name: str, size: int) -> None:
        """Make the disk's filesystem of `size` bytes and mount it; a no-op when not enforced."""
        if not self.enforced:
            return
        try:
            with self._image(name).open("xb") as handle:
                handle.truncate(size)  # sparse: the host spends only what is written
            # No reserved root blocks; no discard and no lazy zeroing later (either would touch
            # the whole sparse file).
            options = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
            # -d: the directories are in the filesystem from the start, so they never go missing
            # while it is being mounted over the placeholders (the engine may be looking).
            layout = str(self._layout())
            _run(self.what, "mkfs.ext4", "-q", "-F", "-m", "0", "-E", options, "-d", layout, str(self._image(name)))
            self._mount(name)
        except BaseException:
            self.destroy(name)
            raise

    def _layout(self) -> Path:
        """A directory with the disk's layout, copied into each new filesystem by mkfs."""
        layout = self.root / f".layout-{len(self._subdirs)}"  # a new subdirectory means a new layout
        if not layout.is_dir():
            partial = self.root / f".layout.{os.getpid()}.{threading.get_ident()}"
            partial.mkdir(parents=True)
            self._lay_out(partial)
            try:
                partial.rename(layout)
            except OSError:  # another thread made it first
                shutil.rmtree(partial, ignore_errors=True)
        return layout

    def _lay_out(self, target: Path) -> None:
        for sub, mode, owned in self._subdirs:
            path = target / sub
            path.mkdir(exist_ok=True)
            os.chmod(path, mode)
            if owned and os.geteuid() == 0:
                os.chown(path, self._uid, self._gid)

    def ensure_mounted(self, name: str) -> Path:
        """Remount after a host reboot; a no-op when mounted (or not enforced)."""
        target = self.mountpoint(name)
        if self.enforced and self._image(name).exists() and not os.path.ismount(target):
            target.mkdir(exist_ok=True)
            self._mount(name)
        return target

    def _mount(self, name: str) -> None:
        # nosuid,nodev: the workload writes this filesystem, so a setuid binary or a device node made on
        # it (by root in the workspace, or written into the image from outside) must mean nothing; the
        # bind mounts into the container inherit both. Not noexec: agents build and run programs in
        # /workspace and /tmp, which is the point of a workspace.
        _run(
            self.what,
            "mount",
            "-o",
            "loop,nosuid,nodev,noinit_itable",
            str(self._image(name)),
            str(self.mountpoint(name)),
        )

    def destroy(self, name: str) -> None:
        target = self.mountpoint(name)
        # Lazy only if something (a container being torn down) still holds it.
        if os.path.ismount(target) and subprocess.run(["umount", str(target)], capture_output=True).returncode:
            try:
                _run(self.what, "umount", "--lazy", str(target))
            except ProviderError:
                if os.path.ismount(target):
                    raise
                # Not mounted any more: a removal of the same workspace running at once unmounted it first.
        self._image(name).unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)

    def used(self, name: str) -> int | None:
        """Bytes in use on the disk's filesystem, as `df` counts them; None when disks are plain directories
        (their filesystem is the host's) or it is not mounted."""
        target = self.mountpoint(name)
        if not self.enforced:
            return None
        try:
            if not os.path.ismount(target):
                return None
            stats = os.statvfs(target)
        except OSError:  # removed meanwhile
            return None
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def names(self) -> set[str]:
        """Every disk that exists, mounted or not."""
        if not self.root.is_dir():
            return set()
        found = set()
        for entry in self.root.iterdir():
            name = entry.name.removesuffix(".img")
            if _NAME.match(name):
                found.add(name)
        return found


def _run(what: str, *argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProviderError(
            f"preparing the {what}: `{' '.join(argv[:2])}` failed: {result.stderr.strip()}; check the free "
            "space under WORKSPACE_DATA_DIR and that loop devices are available (`losetup -f` prints one)"
        )
