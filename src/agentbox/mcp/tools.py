"""The MCP tools: one entry of TOOLS per tool, each a call of one route of the HTTP API.

A tool's arguments are the route's own request body model (in wire/),
with the route's path fields (`workspace_id`, `pid`) added first: its inputSchema is that
model's JSON schema, and its arguments are validated by it, as the route validates its body.
Adding a tool for a new route is one entry here.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from agentbox.mcp import answers
from agentbox.wire.commands import ExecIn
from agentbox.wire.common import MAX_SECONDS
from agentbox.wire.domain import Status
from agentbox.wire.processes import ProcessIn, SessionIn, SessionRunIn
from agentbox.wire.snapshots import CreateSnapshot, ForkWorkspaces
from agentbox.wire.templates import CreateTemplate
from agentbox.wire.tools import EditToolIn, GlobToolIn, GrepToolIn, ReadToolIn, WriteToolIn
from agentbox.wire.workspaces import CreateWorkspace, SetNetwork

#: Where the routes are; a tool's `path` is under it.
API_PREFIX = "/api/v1"


class _InWorkspace(BaseModel):
    workspace_id: str = Field(description="the workspace's id (ws-...), from create_workspace or list_workspaces")


def in_workspace(body: type[BaseModel]) -> type[BaseModel]:
    """`body`, a route's request body model, with the route's `workspace_id` as its first field.

    Nothing else changes (title, configuration, other fields), so the schema is the body's plus
    `workspace_id`.
    """
    # Bases in this order put workspace_id first: pydantic collects fields from the last base on.
    return create_model(body.__name__, __base__=(body, _InWorkspace), __module__=__name__)


class _InSession(_InWorkspace):
    session_id: str = Field(description="the session's id, from open_session")


def in_session(body: type[BaseModel]) -> type[BaseModel]:
    """`body` with the route's `workspace_id` and `session_id` first (as `in_workspace`)."""
    return create_model(body.__name__, __base__=(body, _InSession), __module__=__name__)


# Arguments of routes without a body: only what their path and query take.


class WorkspaceRef(_InWorkspace):
    model_config = ConfigDict(extra="forbid")


class ProcessRef(WorkspaceRef):
    pid: int = Field(description="the process's PID in the workspace, from start_process")


class OutputFrom(ProcessRef):
    offset: int = Field(0, ge=0, description="the byte to start from: 0, or next_offset from the last call")


class SessionRef(WorkspaceRef):
    session_id: str = Field(description="the session's id, from open_session")


class PortRef(WorkspaceRef):
    port: int = Field(ge=1, le=65535, description="the port a server listens on inside the workspace")
    expires_in: int = Field(3600, ge=60, le=MAX_SECONDS, description="seconds the URL works")


class TemplateRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=129, description="the template's id (tpl-...) or name[:tag]")


class WorkspaceFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status | None = Field(None, description="only workspaces with this status")
    label: list[str] = Field(default_factory=list, description="key=value labels a workspace must all have")


@dataclass(frozen=True)
class Tool:
    """One MCP tool: a call of the route `method` `path` (under API_PREFIX).

    The `{fields}` in `path` and the `query` fields come from the validated arguments; any other
    argument goes in the JSON body, as the caller gave it, so that the route validates what was
    asked exactly as it would over HTTP. `answer` shapes the route's successful answer.
    """

    name: str
    description: str
    arguments: type[BaseModel]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    answer: answers.Shape = answers.as_json
    query: tuple[str, ...] = ()

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(field for _, field, _, _ in string.Formatter().parse(self.path) if field)

    @property
    def body_fields(self) -> frozenset[str]:
        return frozenset(self.arguments.model_fields) - set(self.path_fields) - set(self.query)

    def input_schema(self) -> dict[str, Any]:
        return self.arguments.model_json_schema()


TOOLS = (
    Tool(
        "create_workspace",
        "Create an isolated Linux workspace (a sandboxed machine whose working directory is /workspace) "
        "and return it, running. Every argument is optional: image, provider, cpu, memory, disk, env, "
        "labels, network, ttl_days, repo (a GitHub repository to check out), idle_timeout (seconds unused "
        'before it is suspended; any tool call wakes it, so you need not care). network: "egress" (the public '
        'internet), "none", or a policy {"allow": ["pypi.org", "*.github.com", "203.0.113.0/24:443"], '
        '"deny": [...]} (names, *. wildcards, IPv4 CIDRs, :PORT; anything else is refused). volumes: '
        '[{"name": "data", "path": "/mnt/data", "read_only": false}] mounts volumes of yours (made through the API '
        "or `agentbox volumes create`), which outlive the workspace. snapshot: a snapshot of yours (id or name, from "
        "snapshot_workspace) to start from. template: a template of yours (name[:tag] or id, from build_template): "
        "its image, its start command started, answered once its ready command passes. Pass its `id` as "
        "workspace_id "
        "to the other tools, and delete it with delete_workspace when done.",
        CreateWorkspace,
        "POST",
        "/workspaces",
    ),
    Tool(
        "list_workspaces",
        "List your workspaces that are not deleted, optionally only those with a status or with every "
        "label given (key=value).",
        WorkspaceFilter,
        "GET",
        "/workspaces",
        query=("status", "label"),
    ),
    Tool(
        "set_network",
        "Change what a workspace may reach while it runs: its next connections obey the new policy. network: "
        '"egress" (the public internet) or a policy {"allow": [...], "deny": [...]} as create_workspace takes '
        'it; a workspace made with "none" keeps none (and one with a network cannot go to "none"): create '
        "another instead. Returns the workspace with its policy.",
        in_workspace(SetNetwork),
        "PATCH",
        "/workspaces/{workspace_id}/network",
    ),
    Tool(
        "snapshot_workspace",
        "Take a snapshot of a workspace (it goes on running): its files, and its memory and processes where the "
        "server can (memory_kept). Pass its id or name as `snapshot` to create_workspace to start a new workspace "
        "from that state, as many times as you like.",
        in_workspace(CreateSnapshot),
        "POST",
        "/workspaces/{workspace_id}/snapshots",
    ),
    Tool(
        "fork_workspace",
        "Fork a workspace into `count` (1-100) new workspaces with its files (and processes, where the server keeps "
        "memory), to try several approaches from the same state; writes in one never reach another. Returns each "
        "new workspace's id, or why it could not be made.",
        in_workspace(ForkWorkspaces),
        "POST",
        "/workspaces/{workspace_id}/fork",
    ),
    Tool(
        "build_template",
        "Build a workspace image of your own from a Dockerfile (FROM an image the server has; RUN steps have no "
        "network), with an optional start_cmd (started in each workspace made from it) and ready_cmd (a workspace "
        "is handed out once it exits 0). Answers at once with status building: ask template_status until it is "
        "ready (or failed, with the error), then pass template to create_workspace.",
        CreateTemplate,
        "POST",
        "/templates",
    ),
    Tool(
        "template_status",
        "One of your templates: its status (building, ready, failed), the build's error, its commands.",
        TemplateRef,
        "GET",
        "/templates/{template}",
    ),
    Tool(
        "delete_workspace",
        "Delete a workspace and everything in it.",
        WorkspaceRef,
        "DELETE",
        "/workspaces/{workspace_id}",
        answers.done("deleted workspace {workspace_id}"),
    ),
    Tool(
        "exec",
        "Run a command in a workspace and wait for it to end: a shell command (run by /bin/sh -c) or an "
        "argv list, in `cwd` (default /workspace), killed after `timeout` seconds. Returns its exit code, "
        "stdout and stderr. For a server or anything that should keep running, use start_process.",
        in_workspace(ExecIn),
        "POST",
        "/workspaces/{workspace_id}/exec",
        answers.exec_answer,
    ),
    Tool(
        "start_process",
        "Start a command in the background in a workspace and return its PID at once; it runs until it "
        "ends or kill_process. Read its output with process_output.",
        in_workspace(ProcessIn),
        "POST",
        "/workspaces/{workspace_id}/processes",
        answers.process_answer,
    ),
    Tool(
        "process_output",
        "Read a background process's output from byte `offset` (stdout and stderr as they came), and its "
        "exit once it has ended. It does not wait: for what comes next, call it again with the "
        "next_offset it returned.",
        OutputFrom,
        "GET",
        "/workspaces/{workspace_id}/processes/{pid}/output",
        answers.output_answer,
        query=("offset",),
    ),
    Tool(
        "kill_process",
        "Kill a background process and everything in its process group; its output stays readable.",
        ProcessRef,
        "DELETE",
        "/workspaces/{workspace_id}/processes/{pid}",
        answers.done("killed process {pid}"),
    ),
    Tool(
        "read_file",
        "Read a text file in a workspace as numbered lines (from line `offset`, at most `limit` lines), "
        "or list a directory. A binary file is said to be one, not shown.",
        in_workspace(ReadToolIn),
        "POST",
        "/workspaces/{workspace_id}/tools/read",
        answers.read_answer,
    ),
    Tool(
        "write_file",
        "Write a text file in a workspace whole (UTF-8), replacing it if it exists; missing parent "
        "directories are made.",
        in_workspace(WriteToolIn),
        "POST",
        "/workspaces/{workspace_id}/tools/write",
        answers.write_answer,
    ),
    Tool(
        "edit_file",
        "Replace `old_string` with `new_string` in a text file in a workspace, exactly. `old_string` must "
        "be in the file once (or use replace_all): copy it from read_file's output, without the line "
        "numbers.",
        in_workspace(EditToolIn),
        "POST",
        "/workspaces/{workspace_id}/tools/edit",
        answers.edit_answer,
    ),
    Tool(
        "glob",
        "Find files in a workspace by glob pattern relative to `path` (default /workspace): `*` within a "
        "directory, `**` across directories, `{a,b}` alternatives. Newest first; bounded by `limit`.",
        in_workspace(GlobToolIn),
        "POST",
        "/workspaces/{workspace_id}/tools/glob",
        answers.glob_answer,
    ),
    Tool(
        "grep",
        "Search file contents in a workspace with a regular expression (ripgrep syntax), optionally only "
        "in files matching `include` (a glob such as *.py), with `context` lines around each match. Files "
        "that .gitignore hides, hidden files and binary files are skipped.",
        in_workspace(GrepToolIn),
        "POST",
        "/workspaces/{workspace_id}/tools/grep",
        answers.grep_answer,
    ),
    Tool(
        "open_session",
        "Open a shell session (bash) in a workspace: commands run with run_in_session keep the directory, "
        "variables and functions earlier ones left. Returns its session_id.",
        in_workspace(SessionIn),
        "POST",
        "/workspaces/{workspace_id}/sessions",
    ),
    Tool(
        "run_in_session",
        "Run shell text in a session and wait for it: its stdout, stderr and exit code. Past `timeout` "
        "seconds (default 120) it is interrupted as by ^C and the session stays usable.",
        in_session(SessionRunIn),
        "POST",
        "/workspaces/{workspace_id}/sessions/{session_id}/run",
        answers.session_answer,
    ),
    Tool(
        "close_session",
        "Close a shell session: its shell and whatever it started end.",
        SessionRef,
        "DELETE",
        "/workspaces/{workspace_id}/sessions/{session_id}",
        answers.done("closed session {session_id}"),
    ),
    Tool(
        "preview_url",
        "A URL a browser can open to reach a server listening on `port` inside a workspace (for example "
        "a web app you started with start_process), valid for `expires_in` seconds.",
        PortRef,
        "GET",
        "/workspaces/{workspace_id}/ports/{port}/url",
        query=("expires_in",),
    ),
)
