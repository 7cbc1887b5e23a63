"""Workspaces as E2B sandboxes, through the official `e2b` SDK: the deployment (create, pause,
resume, remove, list); what reaches inside a sandbox is its runtime (runtime.py).

Where E2B is reached is the SDK's own business: `E2B_API_KEY` (given here), and the SDK's
environment variables `E2B_DOMAIN`, `E2B_API_URL` and `E2B_SANDBOX_URL` for anything but
E2B's cloud (the tests point the last two at a local stand-in).

How agentbox's model maps onto E2B's (docs in the README, "Providers"):
- `image` names an E2B template; the server's default image means `WORKSPACE_E2B_TEMPLATE`;
- cpu, memory and disk are the template's (E2B sets them when a template is built);
- the TTL becomes the sandbox's timeout, capped at E2B's maximum of 24 hours;
- stop and start are E2B's pause and resume;
- agentbox's ids travel in the sandbox's metadata, which is how `inventory` finds them;
- sandboxes are made closed to public traffic (E2B's `allow_public_traffic=False`): their ports
  answer at E2B's public URLs only to requests carrying the sandbox's traffic token, which
  agentbox never hands out. agentbox itself reaches ports through its helper over envd (the
  runtime's `connect`), authenticated by the sandbox's envd access token the SDK sends, so it
  needs no public port.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime
from typing import Any

import e2b
from e2b import Sandbox, SandboxQuery, SandboxState

from agentbox.errors import WorkspaceGone
from agentbox.providers.base import Capabilities, Provider, ProviderState, Resources, WorkspaceSpec
from agentbox.providers.e2b.commands import CommandTransport, install
from agentbox.providers.e2b.errors import e2b_errors
from agentbox.providers.e2b.runtime import E2BRuntime

WORKSPACE_KEY = "agentbox.workspace.id"
INSTANCE_KEY = "agentbox.instance"
MAX_TIMEOUT = 24 * 3600  # E2B's longest sandbox lifetime, in seconds
RENEW_SLACK = 3600  # renew once an hour at most, not every round


class E2BProvider(Provider):
    name = "e2b"

    def __init__(
        self, api_key: str, *, instance: str, default_image: str, template: str, public_traffic: bool = False
    ) -> None:
        self._opts: dict[str, Any] = {"api_key": api_key}
        self.public_traffic = public_traffic
        self.instance = instance
        self.default_image = default_image
        self.template = template
        self._connected: dict[str, Sandbox] = {}
        self._helpers: dict[str, str] = {}  # sandbox -> where agentbox's helper is in it
        self._lock = threading.Lock()

    def capabilities(self) -> Capabilities:
        return Capabilities(
            runtime="e2b",
            isolation="E2B sandbox (Firecracker microVM)",
            sized_per_request=False,
            network_policies=frozenset({"egress", "none"}),  # "none": the SDK's allow_internet_access=False
            processes=True,
            watch=True,
            ports=True,
        )

    def resources(self, ref: str) -> Resources:
        with e2b_errors("asking E2B about the sandbox"):
            info = Sandbox.get_info(ref, **self._opts)
        return Resources(cpu=info.cpu_count, memory=info.memory_mb << 20)  # the SDK does not report the disk

    def keep(self, ref: str, until: datetime | None) -> None:
        """Push E2B's timeout out again when the sandbox has less than a day left and its TTL has more."""
        now = datetime.now(UTC)
        wanted = MAX_TIMEOUT if until is None else min((until - now).total_seconds(), MAX_TIMEOUT)
        with e2b_errors("renewing the E2B sandbox's timeout"):
            info = Sandbox.get_info(ref, **self._opts)
            left = (info.end_at - now).total_seconds()
            if wanted - left > RENEW_SLACK:
                Sandbox.set_timeout(ref, int(wanted), **self._opts)

    # Lifecycle

    def create(self, spec: WorkspaceSpec) -> str:
        template = self.template if spec.image == self.default_image else spec.image
        timeout = MAX_TIMEOUT if spec.ttl_seconds is None else max(60, min(spec.ttl_seconds, MAX_TIMEOUT))
        metadata = {WORKSPACE_KEY: spec.id, INSTANCE_KEY: self.instance}
        with e2b_errors("creating the E2B sandbox"):
            sandbox = Sandbox.create(
                template=template,
                timeout=timeout,
                metadata=metadata,
                allow_internet_access=spec.network != "none",
                network={"allow_public_traffic": self.public_traffic},
                **self._opts,
            )
        with self._lock:
            self._connected[sandbox.sandbox_id] = sandbox
        return sandbox.sandbox_id

    def start(self, ref: str) -> None:
        with e2b_errors("resuming the E2B sandbox"):
            sandbox = Sandbox.connect(ref, **self._opts)  # resumes a paused sandbox
        with self._lock:
            self._connected[ref] = sandbox

    def stop(self, ref: str) -> None:
        with e2b_errors("pausing the E2B sandbox"):
            self._sandbox(ref).pause()
        with self._lock:
            self._connected.pop(ref, None)

    def destroy(self, ref: str) -> None:
        with self._lock:
            self._connected.pop(ref, None)
            self._helpers.pop(ref, None)
        with e2b_errors("removing the E2B sandbox"), contextlib.suppress(e2b.SandboxNotFoundException):
            Sandbox.kill(ref, **self._opts)

    def state(self, ref: str) -> ProviderState:
        try:
            with e2b_errors("asking E2B about the sandbox"):
                info = Sandbox.get_info(ref, **self._opts)
        except WorkspaceGone:
            return "missing"
        return "running" if info.state == SandboxState.RUNNING else "stopped"

    def inventory(self) -> dict[str, tuple[str, ProviderState]]:
        query = SandboxQuery(metadata={INSTANCE_KEY: self.instance}, state=[SandboxState.RUNNING, SandboxState.PAUSED])
        found: dict[str, tuple[str, ProviderState]] = {}
        with e2b_errors("listing E2B sandboxes"):
            pages = Sandbox.list(query=query, **self._opts)
            while pages.has_next:
                for sandbox in pages.next_items():
                    workspace_id = (sandbox.metadata or {}).get(WORKSPACE_KEY)
                    if workspace_id:
                        state: ProviderState = "running" if sandbox.state == SandboxState.RUNNING else "stopped"
                        found[workspace_id] = (sandbox.sandbox_id, state)
        return found

    # The runtime

    def runtime(self, ref: str) -> E2BRuntime:
        return E2BRuntime(lambda: self._sandbox(ref), lambda: self._helper(ref))

    # Helpers

    def _helper(self, ref: str) -> CommandTransport:
        """agentbox's helper in the sandbox, installed on first use."""
        sandbox = self._sandbox(ref)
        with self._lock:
            helper = self._helpers.get(ref)
        if helper is None:
            helper = install(sandbox)
            with self._lock:
                self._helpers[ref] = helper
        return CommandTransport(sandbox, helper)

    def _sandbox(self, ref: str) -> Sandbox:
        with self._lock:
            sandbox = self._connected.get(ref)
        if sandbox is None:
            with e2b_errors("connecting to the E2B sandbox"):
                sandbox = Sandbox.connect(ref, **self._opts)
            with self._lock:
                self._connected[ref] = sandbox
        return sandbox
