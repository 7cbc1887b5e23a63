"""The bodies of a workspace's files (routes: api/files.py): a directory's listing, a write's result, and
the events of a watched directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class DirEntryOut(BaseModel):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: str
    mtime: int


class WatchEventOut(BaseModel):
    """Something that happened under a watched directory (a line of GET .../watch)."""

    type: Literal["create", "write", "remove", "rename", "chmod"]
    path: str


class DirListing(BaseModel):
    path: str
    type: Literal["dir"] = "dir"
    entries: list[DirEntryOut]


class WriteResult(BaseModel):
    path: str
    size: int
