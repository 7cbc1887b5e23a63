"""Wiring: from settings to a running manager (database, engine, runtime choice, providers)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import get_args

import docker
import docker.errors
import requests.exceptions
from sqlalchemy.engine import make_url

from agentbox.auth.keys import ApiKeys
from agentbox.auth.limits import Throttle
from agentbox.auth.tokens import Tokens, server_secret
from agentbox.config import ProviderName, Settings
from agentbox.db.models import Status, utcnow
from agentbox.db.store import LIVE, Store
from agentbox.egress.proxy import Refusal
from agentbox.egress.rules import Policy, github_token_name
from agentbox.errors import AgentboxError
from agentbox.github.service import GitHub
from agentbox.providers.base import Provider
from agentbox.providers.docker import DockerProvider, install_helper
from agentbox.providers.docker.channel import TcpChannel
from agentbox.providers.docker.disks import VOLUME_SUBDIRS, Disks
from agentbox.providers.docker.egress_gateway import EgressGateway
from agentbox.providers.docker.firewall import FirewallError
from agentbox.providers.docker.network import NetworkError, WorkspaceNetwork, stored_grant
from agentbox.providers.docker.oci_runtime import STANDARD_RUNTIME, RuntimeChoice, checkpoint_runtime, choose_runtime
from agentbox.providers.e2b import E2BProvider
from agentbox.vault import Vault
from agentbox.wire.network import policy_of
from agentbox.workspaces.audit import Call
from agentbox.workspaces.background import Lifecycle
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.metrics import Metrics
from agentbox.workspaces.pool import WarmPool
from agentbox.workspaces.reconcile import Reconciler
from agentbox.workspaces.replicas import Replica, ReplicaIdInUse
from agentbox.workspaces.usage import SharedSamples, UsageHistory

log = logging.getLogger("agentbox.server.service")
#: Connections kept per Engine API URL: as many as the API has worker threads (server/app.py), which
#: may all call the engine at once.
ENGINE_CONNECTIONS = 400


class StartupError(AgentboxError):
    """The service cannot start; the message says what to fix."""


@dataclass
class Service:
    settings: Settings
    store: Store
    keys: ApiKeys
    tokens: Tokens
    throttle: Throttle
    runtime: RuntimeChoice | None = None
    manager: WorkspaceManager | None = None
    lifecycle: Lifecycle | None = None
    metrics: Metrics = field(default_factory=Metrics)
    docker_client: docker.DockerClient | None = field(default=None, repr=False)
    github: GitHub | None = None
    #: The owners' secrets (None without GITHUB_APP_ENCRYPTION_KEY, which seals them).
    vault: Vault | None = None
    usage: UsageHistory | None = None
    #: This process among the replicas sharing the database (None with workspaces disabled).
    replica: Replica | None = None
    #: Where this replica serves (host:port), as the replicas table shows it.
    address: str | None = None

    @classmethod
    def start(cls, settings: Settings, address: str | None = None) -> Service:
        service = cls.over(settings, Store(settings.sqlalchemy_url))
        service.address = address
        try:
            service._open()
        except BaseException:
            service.close()  # nothing half-open: no engine connection, no database pool
            raise
        return service

    @classmethod
    def over(cls, settings: Settings, store: Store) -> Service:
        """A service on `store` with who-gets-in in place (keys, tokens, rate limits) and nothing started."""
        keys = ApiKeys(store)
        try:
            secret = server_secret(settings.secret_key.get_secret_value(), settings.data_dir)
        except (OSError, ValueError) as exc:
            store.close()
            raise StartupError(
                f"the server's token secret (WORKSPACE_SECRET_KEY or WORKSPACE_DATA_DIR): {exc}"
            ) from None
        throttle = Throttle(settings.rate_limit_failures, settings.rate_limit_anonymous)
        return cls(settings=settings, store=store, keys=keys, tokens=Tokens(secret, keys), throttle=throttle)

    def sync_keys(self) -> None:
        """Make the key records match WORKSPACE_API_KEYS (keys added there made, removed ones revoked)."""
        self.keys.sync_from_settings(self.settings.owners_by_key, self.settings.admin_owners)

    def _open(self) -> None:
        settings = self.settings
        try:
            self.store.migrate()
        except Exception as exc:
            raise StartupError(
                f"cannot open or migrate the database at WORKSPACE_DATABASE_URL "
                f"({_redact(settings.sqlalchemy_url)}): {exc}"
            ) from None
        self.sync_keys()
        keyring = settings.keyring
        self.github = GitHub(self.store, keyring, settings.github_allowed_hosts) if keyring is not None else None
        self.vault = Vault(self.store, keyring) if keyring is not None else None
        if not settings.enabled:
            log.info("agent workspaces are disabled (ENABLE_AGENT_WORKSPACES=false): no engine is contacted")
            return
        if not self.keys.any():
            log.warning(
                "no API key works: every workspace request will be refused (401); set WORKSPACE_API_KEYS "
                "(owner:key) to make the first admin's key"
            )
        e2b_key = settings.e2b_api_key.get_secret_value()
        offered = ",".join(settings.providers)
        unavailable = {
            name: f"this server does not offer it (WORKSPACE_PROVIDERS={offered})"
            for name in get_args(ProviderName)
            if name not in settings.providers
        }
        if not e2b_key and "e2b" in settings.providers:
            unavailable["e2b"] = "E2B_API_KEY is not set: set it to your E2B API key and restart"
        if settings.default_provider in unavailable:
            raise StartupError(
                f"WORKSPACE_DEFAULT_PROVIDER={settings.default_provider}: {unavailable[settings.default_provider]}"
            )
        providers: dict[str, Provider] = self._docker_providers() if settings.uses_docker else {}
        if e2b_key and "e2b" in settings.providers:
            providers["e2b"] = E2BProvider(
                e2b_key, instance=settings.instance_id, default_image=settings.image, template=settings.e2b_template
            )
        pool = None
        if settings.warm_pool_size > 0 and settings.default_provider in providers:
            pool = WarmPool(settings, self.store, providers[settings.default_provider], self.metrics)
        self.manager = WorkspaceManager(settings, self.store, providers, unavailable, self.metrics, self.github, pool)
        vault = self.vault
        if vault is not None:
            self.manager.secret_names = lambda owner: {info.name for info in vault.list(owner)}
        replica = Replica(self.store, settings.replica_id, self.address)
        try:
            replica.join()  # a lone replica (SQLite, or the first on PostgreSQL) leads from here on
        except ReplicaIdInUse as exc:
            raise StartupError(str(exc)) from None
        self.replica = replica
        reconciler = Reconciler(self.store, providers, pool, self.metrics, replica)
        reconciler.template_pooled = self.manager.template_pools.fits
        reconciler.builds_gone = self.manager.templates.recover
        try:
            # The leader reconciles everything before serving; another replica gives up only what its own
            # previous run left half-made (the leader does the rest).
            reconciler.run(startup=True, everything=replica.leads())
        except AgentboxError as exc:
            raise StartupError(f"reconciling workspaces with their providers failed: {exc.detail}") from None
        # A restarted server's proxy starts empty: the running policy workspaces get their policies back (their
        # traffic is refused meanwhile: they have no firewall grant) before anything is served.
        self.manager.push_network_policies()
        self.lifecycle = Lifecycle(self.manager, reconciler, pool, settings.reap_interval, replica)
        self.lifecycle.start()
        if settings.usage_interval > 0:
            self.usage = UsageHistory(
                self.manager.measure, settings.usage_interval, shared=SharedSamples(self.store), leads=replica.leads
            )
            self.usage.start()

    def _docker_providers(self) -> dict[str, Provider]:
        """`gvisor` (runsc, or its fallback) and `docker` (runc) on the engine at DOCKER_HOST, sharing one network."""
        settings = self.settings
        try:
            # docker-py keeps a pool per URL, of 10 connections by default; past that, concurrent calls to
            # one URL (a burst of creates) overflow it, and the warning it then logs can crash on a pool
            # closed meanwhile (urllib3: 'NoneType' has no attribute 'qsize'). Room for every thread.
            self.docker_client = docker.from_env(timeout=settings.engine_timeout, max_pool_size=ENGINE_CONNECTIONS)
            self.docker_client.ping()
            self.runtime = choose_runtime(
                self.docker_client, settings.gvisor_runtime, settings.gvisor_fallback_runtime, settings.probe_timeout
            )
            checkpointing = checkpoint_runtime(
                self.docker_client, self.runtime, settings.gvisor_checkpoint_runtime, settings.gvisor_runtime
            )
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise StartupError(
                f"cannot use the Docker engine ({exc}): start dockerd (`make run` does it) or set DOCKER_HOST; "
                "a server with no Docker provider leaves gvisor and docker out of WORKSPACE_PROVIDERS"
            ) from None
        network = self._workspace_network()
        egress = self._egress_gateway(network) if network is not None and settings.egress_proxy else None
        disks = Disks(settings.data_dir / "disks", settings.user)
        if not disks.enforced:
            log.warning("SECURITY: workspace disk limits are NOT enforced: %s", disks.why_not)
        helper = install_helper(settings.data_dir / "bin")
        volumes = Disks(settings.data_dir / "volumes", settings.user, VOLUME_SUBDIRS, "volume")
        for volume_id in volumes.names():  # mounted from create to delete: again after a host reboot
            try:
                volumes.ensure_mounted(volume_id)
            except AgentboxError as exc:  # its workspaces' creates and starts say so, and try again
                log.warning("mounting volume %s failed: %s", volume_id, exc.detail)
        tcp_channel = None
        if settings.helper_channel == "tcp":  # keys from the server's secret: any replica derives them
            if os.geteuid() != 0:
                raise StartupError(
                    "WORKSPACE_HELPER_CHANNEL=tcp: each workspace's channel key is a file that only root may read (the "
                    "sandbox's init reads it as root): run agentbox as root, or set WORKSPACE_HELPER_CHANNEL=socket"
                )
            secret = server_secret(settings.secret_key.get_secret_value(), settings.data_dir)
            tcp_channel = TcpChannel(settings.helper_port, secret, settings.data_dir / "secrets")
        isolation = "gVisor user-space kernel" if self.runtime.gvisor else "container (runc fallback)"
        providers: dict[str, Provider] = {}
        for name, runtime, kind in (
            ("gvisor", self.runtime.runtime, isolation),
            ("docker", STANDARD_RUNTIME, "container (runc)"),
        ):
            provider = DockerProvider(
                self.docker_client,
                name=name,
                oci_runtime=runtime,
                isolation=kind,
                user=settings.user,
                disks=disks,
                helper=helper,
                instance=settings.instance_id,
                network=network,
                control_root=settings.data_dir / "run",
                checkpoint_runtime=checkpointing if name == "gvisor" else None,
                tcp_channel=tcp_channel,
                egress=egress,
                volumes=volumes,
                build_runtime=settings.template_builder == "gvisor",
            )
            if name == "gvisor":
                self._reboot_after_runsc_upgrade(provider)
            if name in settings.providers:
                providers[name] = provider
        return providers

    def _reboot_after_runsc_upgrade(self, provider: DockerProvider) -> None:
        """When the runsc build changed since the last start, restart the sandboxes it cannot reach."""
        assert self.runtime is not None
        marker = self.settings.data_dir / "runsc-version"
        current = self.runtime.version or "none"
        previous = marker.read_text().strip() if marker.exists() else None
        if previous == current:
            return
        try:
            rebooted = provider.reboot_unreachable()
        except AgentboxError as exc:
            raise StartupError(f"checking workspaces after a runsc change failed: {exc.detail}") from None
        if rebooted:
            log.warning(
                "runsc changed (%s -> %s): restarted %d running workspace(s) under the new build; their files "
                "are kept, their processes were lost: %s",
                previous or "unknown",
                current,
                len(rebooted),
                ", ".join(rebooted),
            )
        marker.write_text(current + "\n")

    def _workspace_network(self) -> WorkspaceNetwork | None:
        """The fenced workspace network, or None (with a warning) when there is none."""
        settings = self.settings
        assert self.docker_client is not None
        if not settings.network_name:
            if isinstance(settings.network_policy, Policy):
                raise StartupError(
                    "WORKSPACE_NETWORK_POLICY is an egress policy, which needs the workspace network's firewall: "
                    "set WORKSPACE_NETWORK_NAME (e.g. workspace_net)"
                )
            if settings.network_policy != "none":
                log.warning(
                    "SECURITY: WORKSPACE_NETWORK_NAME is empty: workspaces share Docker's default bridge and can "
                    "reach each other, the host and private networks; set it (e.g. workspace_net) to isolate them"
                )
            return None
        # The grants come from the database, not from the containers' labels alone: a label is what the policy
        # was at create, and a PATCH changes the policy (policy -> egress kept a workspace offline after a
        # restart; egress -> policy gave it the internet until the policies were handed back).
        by_name = settings.egress_proxy
        stored = {
            w.id: stored_grant(w.egress, w.allow_cidrs, by_name)
            for w in self.store.find(statuses=[*LIVE, Status.POOLED.value])
            if w.network == settings.network_name
        }
        try:
            return WorkspaceNetwork.open(self.docker_client, settings.network_name, settings.instance_id, stored)
        except (NetworkError, FirewallError) as exc:
            raise StartupError(exc.detail) from None
        except docker.errors.APIError as exc:
            raise StartupError(
                f"WORKSPACE_NETWORK_NAME={settings.network_name}: creating the network failed: {exc.explanation}"
            ) from None

    def _egress_gateway(self, network: WorkspaceNetwork) -> EgressGateway:
        """The egress proxy and resolver of the workspace network, with the hooks that reach up: refusals into the
        workspace's audit trail, secrets from its owner's vault."""
        settings = self.settings
        assert self.docker_client is not None
        try:
            return EgressGateway(
                self.docker_client,
                network,
                settings.data_dir / "egress",
                on_refusal=self._egress_refused,
                secrets=self._egress_secrets,
                proxy_port=settings.egress_proxy_port,
                dns_port=settings.egress_dns_port,
                upstreams=tuple(settings.egress_upstream_dns),
                upstream_ca=settings.egress_upstream_ca,
            ).open()
        except (AgentboxError, OSError) as exc:
            detail = exc.detail if isinstance(exc, AgentboxError) else str(exc)
            raise StartupError(
                f"the egress proxy (WORKSPACE_EGRESS_PROXY) could not start: {detail}; free its ports "
                "(WORKSPACE_EGRESS_PROXY_PORT, WORKSPACE_EGRESS_DNS_PORT) or set WORKSPACE_EGRESS_PROXY=false"
            ) from None

    def _owner_of(self, workspace_id: str) -> str | None:
        workspace = self.store.get(workspace_id)
        return None if workspace is None else workspace.owner

    def _egress_refused(self, workspace_id: str, refusal: Refusal) -> None:
        owner = self._owner_of(workspace_id)
        if owner is None or self.manager is None:
            return
        arguments = {
            "name": refusal.name,
            "ip": refusal.ip,
            "port": refusal.port,
            "protocol": refusal.protocol,
            "rule": refusal.rule,
        }
        call = Call(workspace_id, owner, utcnow(), "EGRESS refused", arguments, 403, 0)
        self.manager.audit.record(call)

    def _egress_secrets(self, workspace_id: str, host: str, names: list[str]) -> dict[str, str]:
        """What the egress proxy puts into a request of the workspace's to `host`: the owner's secrets, and the
        installation token of a GitHub grant whose git host `host` is (the grant as stored, never as asked)."""
        workspace = self.store.get(workspace_id)
        if workspace is None:
            raise LookupError("no such workspace")
        policy = policy_of(workspace.network, workspace.egress, workspace.allow)
        stored = policy.github if isinstance(policy, Policy) else []
        grants = {github_token_name(grant.app): grant for grant in stored if grant.host == host}
        found = {}
        for name in names:
            grant = grants.get(name)
            if grant is not None and self.github is not None:
                found[name] = self.github.repositories_token(workspace.owner, grant.app, grant.repositories)
            elif self.vault is not None:
                found[name] = self.vault.reveal(workspace.owner, name)
            else:
                raise LookupError("this server keeps no secrets")
        return found

    def close(self) -> None:
        """Stop background work, remove the idle warm pool, release the engine and the database. Idempotent."""
        if self.usage is not None:
            self.usage.stop()
            self.usage = None
        if self.lifecycle is not None:
            self.lifecycle.stop()  # leaves the replicas; the last one out removes the idle warm pool
            self.lifecycle = None
        if self.replica is not None:
            self.replica.leave()  # already left with the lifecycle, unless start-up failed before it
            self.replica = None
        if self.manager is not None:
            self.manager.templates.close()  # builds under way end with the engine connection
            for provider in self.manager.providers.values():
                provider.close()  # the disks of removals still under way are not left mounted past the server
        if self.docker_client is not None:
            self.docker_client.close()
            self.docker_client = None
        if self.github is not None:
            self.github.close()
            self.github = None
        if self.manager is not None:
            self.manager.audit.close()
        self.store.close()


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
