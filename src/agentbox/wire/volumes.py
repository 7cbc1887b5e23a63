"""The bodies of volumes (routes: api/volumes.py): a volume to make, a volume as answered, and a volume to mount
into a workspace at its create (`CreateWorkspace.volumes`). The rules on names and mount paths are here, where
the API's validation and the manager's own checks both read them.
"""

from __future__ import annotations

import posixpath
import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from agentbox.wire.common import _SIZE_SCHEMA, _size_at_least
from agentbox.wire.sizes import format_size, parse_size

#: A volume's name: letters, digits, ".", "_" and "-", starting with a letter or digit, at most 64.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: The smallest volume (an ext4 filesystem needs room for its journal and tables).
MIN_VOLUME_SIZE = parse_size("16M")
#: Volumes one workspace may mount.
MAX_MOUNTS = 16
#: Where a volume may not be mounted: the kernel's own filesystems and the helper's control directories (a
#: volume there would hide them); the workspace's own disk's mount points themselves (one under them is fine).
RESERVED_UNDER = ("/proc", "/sys", "/dev", "/.agentbox")
RESERVED_AT = ("/", "/workspace", "/tmp", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64")

_NAME = re.compile(NAME_PATTERN)

VolumeSize = Annotated[int, _size_at_least(MIN_VOLUME_SIZE), _SIZE_SCHEMA]


def mount_path_problem(path: str) -> str | None:
    """What is wrong with `path` as where a volume is mounted in a workspace, or None."""
    if "\0" in path:
        return "must not contain NUL characters"
    if not path.startswith("/"):
        return f"{path!r} is not an absolute path: start it with /"
    if posixpath.normpath(path) != path or path.startswith("//"):
        plain = posixpath.normpath(path).replace("//", "/")
        return f"{path!r} is not a plain absolute path (no '.', '..', '//' or trailing '/'): write {plain!r}"
    if path in RESERVED_AT:
        return f"{path!r} may not be a volume's mount point (the workspace's own); mount it below, e.g. /mnt/data"
    for reserved in RESERVED_UNDER:
        if path == reserved or path.startswith(reserved + "/"):
            return f"{path!r} is under {reserved}, the system's or agentbox's own: mount it elsewhere, e.g. /mnt/data"
    return None


def _mount_path(path: str) -> str:
    problem = mount_path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


MountPath = Annotated[str, Field(min_length=2, max_length=1024), AfterValidator(_mount_path)]
VolumeName = Annotated[str, Field(pattern=NAME_PATTERN, description="e.g. datasets or cache-1")]


class CreateVolume(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: VolumeName
    size: VolumeSize = Field(description='bytes, or a size such as "1G"; at most WORKSPACE_MAX_VOLUME_SIZE')


class VolumeMountIn(BaseModel):
    """A volume of yours to mount into the workspace being made."""

    model_config = ConfigDict(extra="forbid")

    name: VolumeName = Field(description="the volume's name (or its id, vol-...)")
    path: MountPath = Field(description="absolute, e.g. /mnt/data; not /, nor under /proc, /sys, /dev or /.agentbox")
    read_only: bool = False


def _distinct_paths(mounts: list[VolumeMountIn]) -> list[VolumeMountIn]:
    seen: set[str] = set()
    for mount in mounts:
        if mount.path in seen:
            raise ValueError(f"two volumes at {mount.path!r}: give each its own path")
        seen.add(mount.path)
    return mounts


VolumeMounts = Annotated[list[VolumeMountIn], Field(max_length=MAX_MOUNTS), AfterValidator(_distinct_paths)]


class VolumeMountOut(BaseModel):
    """A volume mounted in a workspace."""

    volume: str = Field(description="its id, vol-...")
    name: str | None = Field(default=None, description="its name")
    path: str
    read_only: bool = False


class VolumeOut(BaseModel):
    id: str
    name: str
    size: str = Field(description='its size, e.g. "1G"')
    created_at: datetime
    used_by: list[str] = Field(
        default_factory=list, description="the workspaces (not deleted) that mount it; it can be deleted once none does"
    )
    used: int | None = Field(default=None, description="bytes written on it; null when the server cannot say")

    @field_validator("size", mode="before")
    @classmethod
    def _readable_size(cls, value: int | str) -> str:
        return format_size(value) if isinstance(value, int) else value


class VolumeList(BaseModel):
    volumes: list[VolumeOut]


def name_problem(name: str) -> str | None:
    """What is wrong with `name` as a volume's name, or None."""
    if _NAME.fullmatch(name) is None:
        return "must be a letter or digit, then letters, digits, '.', '_' or '-' (at most 64 in all), e.g. datasets"
    return None
