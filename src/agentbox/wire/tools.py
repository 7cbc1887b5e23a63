"""The bodies of the file tools (routes: api/tools.py, and MCP's tools of the same names): read, write,
edit, glob and grep.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agentbox.wire.common import AbsolutePath, NoNul


class ReadToolIn(BaseModel):
    path: AbsolutePath
    offset: int = Field(default=1, ge=1, description="the first line to give, counted from 1")
    limit: int = Field(default=2000, ge=1, le=100_000, description="how many lines at most")


class ReadToolOut(BaseModel):
    path: str
    content: str = Field(description='numbered lines ("     1\\tfirst line\\n"), or a directory\'s entries')
    total_lines: int = Field(description="lines in the whole file (entries, for a directory)")
    size: int
    is_binary: bool = Field(description="true: not text (a NUL, or not UTF-8); content is then empty")
    is_directory: bool


class WriteToolIn(BaseModel):
    path: AbsolutePath
    content: str = Field(max_length=16 << 20)


class EditToolIn(BaseModel):
    path: AbsolutePath
    old_string: str = Field(min_length=1, max_length=1 << 20)
    new_string: str = Field(max_length=1 << 20)
    replace_all: bool = False


class EditToolOut(BaseModel):
    path: str
    replacements: int


class GlobToolIn(BaseModel):
    pattern: NoNul = Field(
        min_length=1,
        max_length=4096,
        description="a glob relative to `path`: `*` and `?` within a directory, `**` across any, `{a,b}`, `[...]`",
        examples=["**/*.py"],
    )
    path: AbsolutePath = Field("/workspace", description="the directory to search under")
    limit: int = Field(default=1000, ge=1, le=10_000, description="how many paths at most")


class GlobToolOut(BaseModel):
    paths: list[str] = Field(description="matching files (and links), newest first")
    truncated: bool = Field(description="true: more matched than `limit`, or the search hit its time or size bound")


class GrepToolIn(BaseModel):
    pattern: NoNul = Field(min_length=1, max_length=4096, description="a regular expression (ripgrep's syntax)")
    path: AbsolutePath = Field("/workspace", description="a directory or file to search")
    include: NoNul | None = Field(None, max_length=1024, description='only files whose names match this glob ("*.py")')
    context: int = Field(default=0, ge=0, le=20, description="lines of context around each match")
    ignore_case: bool = False
    limit: int = Field(default=200, ge=1, le=5000, description="how many matching lines at most")


class GrepLineOut(BaseModel):
    path: str
    line_number: int
    line: str = Field(description="the line, cut at 500 characters")
    is_match: bool = Field(description="false for a context line")


class GrepToolOut(BaseModel):
    matches: list[GrepLineOut]
    truncated: bool = Field(description="true: stopped at `limit`, 1 MiB of text or 20 seconds; narrow the search")
    engine: Literal["rg", "grep"] = Field(
        description="rg (skips .gitignored, hidden and binary files) or, in images without it, grep -P"
    )
