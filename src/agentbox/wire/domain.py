"""What a caller asks the manager for, as plain objects: the API converts its request bodies to these.

The manager, the pool and the GitHub service work on them, so nothing below the API depends on
pydantic's request models or on HTTP, and a caller with no HTTP in between (the CLI's local
commands, tests, a future second API) builds them directly.

Also the names that the API's bodies (the other modules of wire/) and the server's rows and settings share, such as
a workspace's statuses: here rather than in models.py or config.py, so that the bodies, and the
client that parses them, need neither SQLAlchemy nor the server's settings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from agentbox.wire.network import NetworkPolicy

#: The providers a server may offer (WORKSPACE_PROVIDERS); a workspace is made by one of them.
ProviderName = Literal["gvisor", "docker", "e2b"]

#: GitHub's own API; a GitHub App registered without an `api_url` is on it.
GITHUB_API = "https://api.github.com"


class Status(enum.StrEnum):
    """Where a workspace is in its life (models.Workspace.status)."""

    # A pre-booted container of the warm pool: no owner yet, not counted as active.
    POOLED = "pooled"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"


@dataclass(frozen=True)
class Checkout:
    """A GitHub repository to check out into /workspace/<name> when the workspace is made."""

    repository: str  # owner/name
    ref: str | None = None
    installation_id: int | None = None
    app: str | None = None  # the registered App's id; None: the owner's only one

    @property
    def name(self) -> str:
        return self.repository.split("/", 1)[1]


@dataclass(frozen=True)
class NewWorkspace:
    """A workspace to make; None everywhere means the server's default."""

    provider: str | None = None
    image: str | None = None
    cpu: float | None = None
    memory: int | None = None
    disk: int | None = None
    ephemeral: bool = True
    ttl_days: float | None = None
    #: A fixed end instead of a sliding TTL (E2B's `timeout`): the workspace ends this many seconds
    #: from its creation, used or not, unless its deadline is moved.
    deadline_seconds: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    network: NetworkPolicy | None = None
    repo: Checkout | None = None
    #: Its ports answer in the preview host form without a token (E2B's default for its sandboxes).
    public_ports: bool = False
    #: The Host its ports' apps are sent, `${PORT}` replaced by the port (E2B's `maskRequestHost`); None:
    #: ``localhost:<port>``. Only what the app sees: requests are routed by the URL the client used.
    request_host: str | None = None
    #: Paused at its fixed end (`deadline_seconds`) instead of deleted.
    pause_at_end: PauseAtEnd | None = None
    #: Seconds unused after which it is suspended, until its next use; 0: never.
    idle_timeout: float | None = None
    #: The owner's volumes to mount into it, by name (or id).
    volumes: tuple[VolumeRequest, ...] = ()
    #: The owner's snapshot it starts from, by id or name: its files (and memory where the snapshot kept it),
    #: its image, sizes and network as the defaults of what is None here.
    snapshot: str | None = None
    #: The owner's template it is made from, by id or name[:tag]: its image, then its start command started and
    #: its ready command passed before it is handed out.
    template: str | None = None


@dataclass(frozen=True)
class VolumeRequest:
    """A volume of the owner's to mount into a new workspace: by name (or id), at an absolute path."""

    name: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Quota:
    """Limits on an owner's active workspaces (starting or running) that the caller's API key sets;
    None: no limit of the key's own (the server's WORKSPACE_MAX_CONCURRENT still holds)."""

    max_workspaces: int | None = None
    max_cpus: float | None = None
    max_memory: int | None = None  # bytes


@dataclass(frozen=True)
class PauseAtEnd:
    """E2B's lifecycle `onTimeout: pause`: what the pause at the end keeps, and whether traffic to the
    paused workspace (envd, its ports) resumes it, for another `deadline_seconds`."""

    keep_memory: bool = True
    auto_resume: bool = False


@dataclass(frozen=True)
class Command:
    """A command to run in a workspace; its env is added to the workspace's own."""

    argv: list[str]
    cwd: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the server's WORKSPACE_EXEC_TIMEOUT
