"""Egress by name on the Docker provider: the proxy and resolver of one fenced network, and its redirect.

One `EgressSupervisor` (egress/supervisor.py: the transparent proxy and the resolver, a child process of the
server) listens on the workspace bridge's gateway address, and the network's `EgressRedirect`
(egress_redirect.py) sends every policy workspace's TCP there and its DNS to the resolver. The supervisor is
asyncio; it runs on an event loop of its own, on a thread of its own, behind the blocking methods here (the
provider's methods block: the manager calls them from worker threads).

A policy workspace gets no firewall grant at all; once its container runs, `attach` gives the proxy its
policy (keyed by its address on the bridge), then redirects it: its first connection already obeys. Its
address may change when its container restarts (`attach` again, or `refresh` from the engine's view of the
network, every few seconds). What the proxy refuses and the secrets it needs go up through the two hooks
the server gave at construction, by workspace id (the gateway maps a client address to its workspace).

The CA the proxy intercepts TLS with (egress/ca.py) is made in the data dir; its certificate alone, added to
the workspace image's own bundle, is bind-mounted read-only over the image's bundle (`trust`), and the usual
variables point at it, so curl, git, Python and Node trust it from the first command. Its key never leaves
the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable, Coroutine
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

from agentbox.egress.ca import ensure_ca
from agentbox.egress.proxy import Refusal
from agentbox.egress.resolver import ResolverConfig
from agentbox.egress.rules import Policy
from agentbox.egress.supervisor import EgressError, EgressSupervisor
from agentbox.errors import ProviderError
from agentbox.providers.docker.egress_redirect import EgressRedirect, Endpoint
from agentbox.providers.docker.network import WorkspaceNetwork, mac_address

log = logging.getLogger("agentbox.providers.docker.egress")

#: refusal(workspace id, what was refused): the server writes it into the workspace's audit trail.
RefusalHook = Callable[[str, Refusal], None]
#: secrets(workspace id, names) -> values, from the vault of the workspace's owner; raises for an unknown one.
#: (workspace id, the name its connection is for, the secrets wanted) -> their values.
SecretsHook = Callable[[str, str, list[str]], dict[str, str]]
#: Where an image keeps its CA bundle (Debian, Ubuntu, Alpine): the one a workspace's tools read by default.
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: What tools read for their CAs when told: each points at the bundle that includes the egress CA.
TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS")
_T = TypeVar("_T")


class EgressGateway:
    def __init__(
        self,
        client: docker.DockerClient,
        network: WorkspaceNetwork,
        directory: Path,
        *,
        on_refusal: RefusalHook,
        secrets: SecretsHook,
        proxy_port: int = 0,
        dns_port: int = 53,
        upstreams: tuple[str, ...] = (),
        upstream_ca: Path | None = None,
        ack_timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.network = network
        self.directory = directory
        self._on_refusal = on_refusal
        self._secrets = secrets
        inspected = client.api.inspect_network(network.name)
        self.gateway = str(inspected["IPAM"]["Config"][0]["Gateway"]).split("/")[0]
        self.ca_cert, _key = ensure_ca(directory / "ca")
        self.supervisor = EgressSupervisor(
            ca_dir=directory / "ca",
            host=self.gateway,
            port=proxy_port,
            on_refusal=self._refused,
            resolve_secrets=self._reveal,
            upstream_ca=upstream_ca,
            ack_timeout=ack_timeout,
            resolver=ResolverConfig(host=self.gateway, port=dns_port, upstreams=upstreams),
        )
        self.redirect: EgressRedirect | None = None
        #: workspace id -> (address, policy) of the workspaces redirected; address -> workspace id.
        self._attached: dict[str, tuple[IPv4Address, Policy]] = {}
        self._clients: dict[str, str] = {}
        #: workspace id -> the policy of a workspace not running, which its next start attaches.
        self._expected: dict[str, Policy] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentbox-egress", daemon=True)
        self._closed = False

    def open(self) -> EgressGateway:
        """Start the proxy and the resolver, and install the redirect chains with no workspace in them (those
        running are handed back by the manager at start-up). Raises ProviderError."""
        self._thread.start()
        try:
            self._call(self.supervisor.start(), 15.0)
            assert self.supervisor.dns_port is not None
            gateway = IPv4Address(self.gateway)
            self.redirect = EgressRedirect.for_firewall(
                self.network.firewall,
                Endpoint(gateway, self.supervisor.port),
                Endpoint(gateway, self.supervisor.dns_port),
            )
            self.redirect.adopt({})
        except BaseException:
            self.close()
            raise
        log.info(
            "egress proxy on %s:%d, resolver on %s:%d, for network %s",
            self.gateway,
            self.supervisor.port,
            self.gateway,
            self.supervisor.dns_port,
            self.network.name,
        )
        return self

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except (EgressError, TimeoutError) as exc:
            future.cancel()
            raise ProviderError(f"the egress proxy: {exc or 'no answer'}") from None

    # Workspaces

    def attach(self, workspace_id: str, address: IPv4Address, policy: Policy) -> None:
        """Give the workspace `policy` (in force on return), then redirect its traffic. Raises ProviderError."""
        assert self.redirect is not None
        with self._lock:
            self._expected.pop(workspace_id, None)
            old = self._attached.get(workspace_id)
            self._call(self.supervisor.set_policy(str(address), policy))
            self._clients[str(address)] = workspace_id
            self._attached[workspace_id] = (address, policy)
            if old is not None and old[0] != address:
                self._forget_address(old[0], workspace_id)
            self.redirect.add(mac_address(workspace_id), address)

    def expect(self, workspace_id: str, policy: Policy) -> None:
        """Remember the policy of a workspace that is not running (changed while stopped, or handed back after a
        server restart): `policy` gives it to its start, which attaches it."""
        with self._lock:
            self._expected[workspace_id] = policy

    def detach(self, workspace_id: str) -> None:
        """Stop redirecting the workspace and drop its policy (it is removed, or its network changes)."""
        with self._lock:
            self._expected.pop(workspace_id, None)
            found = self._attached.pop(workspace_id, None)
            if self.redirect is not None:
                self.redirect.remove(mac_address(workspace_id))
            if found is not None:
                self._forget_address(found[0], workspace_id)

    def _forget_address(self, address: IPv4Address, workspace_id: str) -> None:
        if self._clients.get(str(address)) == workspace_id:
            del self._clients[str(address)]
            self._call(self.supervisor.set_policy(str(address), None))

    def policy(self, workspace_id: str) -> Policy | None:
        """The workspace's policy: the one it was last attached or expected with (None: it has none here)."""
        if workspace_id in self._expected:
            return self._expected[workspace_id]
        found = self._attached.get(workspace_id)
        return None if found is None else found[1]

    def restore(self) -> None:
        """Repair the redirect chains (after the firewall's own repair), and follow workspaces whose address
        changed (a container restarted by the engine). Raises FirewallError."""
        if self.redirect is None:
            return
        self.redirect.restore()
        if not self._attached:
            return
        try:
            containers = self.client.api.inspect_network(self.network.name).get("Containers") or {}
        except docker.errors.DockerException:
            return  # the engine is away: the next round
        now = {
            str(c.get("MacAddress", "")).lower(): str(c.get("IPv4Address", "")).split("/")[0]
            for c in containers.values()
        }
        for workspace_id, (address, policy) in list(self._attached.items()):
            current = now.get(mac_address(workspace_id))
            if current and current != str(address):
                log.info("workspace %s moved to %s: its egress policy follows", workspace_id, current)
                with contextlib.suppress(ProviderError):
                    self.attach(workspace_id, IPv4Address(current), policy)

    # Hooks, on the gateway's loop: what reaches the database runs in a worker thread.

    def _refused(self, refusal: Refusal) -> None:
        workspace_id = self._clients.get(refusal.client)
        if workspace_id is not None:
            self._loop.run_in_executor(None, self._report, workspace_id, refusal)

    def _report(self, workspace_id: str, refusal: Refusal) -> None:
        try:
            self._on_refusal(workspace_id, refusal)
        except Exception:
            log.exception("recording a refusal of workspace %s failed", workspace_id)

    async def _reveal(self, client: str, host: str, names: list[str]) -> dict[str, str]:
        workspace_id = self._clients.get(client)
        if workspace_id is None:
            raise LookupError(f"{client} is no workspace with an egress policy")
        return await asyncio.get_running_loop().run_in_executor(None, self._secrets, workspace_id, host, names)

    # The CA, trusted inside the workspace

    def trust(
        self, image: str, *, own_bundle_only: bool = False
    ) -> tuple[list[tuple[Path, str, bool]], dict[str, str]]:
        """The bind mounts (source, target, read-only) and variables that make a workspace of `image` trust the
        proxy's CA: the image's own bundle with the CA's certificate appended, over the image's bundle.

        `own_bundle_only`: nothing for an image with no bundle at SYSTEM_BUNDLE (a workspace open to the internet:
        the CA alone, with the variables pointing every tool at it, would make its tools trust nothing else,
        where an image that keeps its bundle elsewhere, as Fedora's, trusted the public CAs)."""
        bundle, own = self._bundle(image)
        if own_bundle_only and not own:
            return [], {}
        return [(bundle, SYSTEM_BUNDLE, True)], {name: SYSTEM_BUNDLE for name in TRUST_VARIABLES}

    def _bundle(self, image: str) -> tuple[Path, bool]:
        """The bundle to mount for `image` (made once per image and CA), and whether the image has one of its own."""
        try:
            image_id = str(self.client.images.get(image).id).removeprefix("sha256:")[:24]
        except docker.errors.ImageNotFound:
            image_id = "missing"  # the create itself says the image is missing
        except docker.errors.DockerException as exc:
            raise ProviderError(f"inspecting the image for its CA bundle: {exc}") from None
        ca = self.ca_cert.read_bytes()
        target = self.directory / "trust" / f"{image_id}-{hashlib.sha256(ca).hexdigest()[:12]}.pem"
        if target.exists():
            return target, target.read_bytes() != ca  # the CA alone: the image had none
        own = self._image_bundle(image) if image_id != "missing" else b""
        target.parent.mkdir(parents=True, exist_ok=True)
        # A partial file of this call's own: creates at once (a burst) each write one and the last rename wins.
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".partial", delete=False) as partial:
            partial.write(own.rstrip(b"\n") + b"\n" + ca if own else ca)
        Path(partial.name).chmod(0o644)
        os.replace(partial.name, target)
        return target, bool(own)

    def _image_bundle(self, image: str) -> bytes:
        """The image's own CA bundle (empty when it has none), read from a container made and never started."""
        try:
            container = self.client.api.create_container(image, command=["/nonexistent"], network_disabled=True)
        except docker.errors.DockerException as exc:
            raise ProviderError(f"reading the image's CA bundle: {exc}") from None
        try:
            stream, _ = self.client.api.get_archive(container["Id"], SYSTEM_BUNDLE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.next()
                handle = archive.extractfile(member) if member is not None and member.isfile() else None
                return handle.read() if handle is not None else b""
        except docker.errors.NotFound:
            return b""
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                self.client.api.remove_container(container["Id"], force=True)

    def close(self) -> None:
        """Stop the proxy and the resolver. The redirect stays (redirected traffic is refused while no proxy
        listens: fail closed) until the network's removal uninstalls it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.supervisor.stop(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
        self._loop.close()

    def uninstall(self) -> None:
        """Remove the redirect chains (when the workspace network itself goes)."""
        if self.redirect is not None:
            self.redirect.uninstall()
