"""System routes: the server's health (runtime, providers, version) and its Prometheus metrics."""

from importlib.metadata import version

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from agentbox.e2b_api import control as e2b_control
from agentbox.providers.base import Capabilities
from agentbox.server.service import Service
from agentbox.web.dependencies import Anyone, Manager, Owner, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.system import Capacity, Health, ProviderInfo, ProviderList, ProviderStatus

VERSION = version("agentbox")

router = APIRouter(tags=["system"])


@router.get(
    "/api/v1/health",
    summary="The server's health",
    response_model=Health,
    responses=errors((401, "A key was sent and it does not work: send a working one, or none."), key=False),
    openapi_extra={"security": [{}]},  # besides the bearer key: none at all (OpenAPI's optional security)
)
def health(request: Request, who: Anyone) -> Health:
    """Say whether the server is up, which runtime isolates workspaces, and which providers it offers.

    Needs no API key. Always 200 while the server runs; with workspaces disabled,
    `workspaces_enabled` is false and `runtime_reason` says so. `replica`, `leader` and `replicas`
    come only with an API key (anyone's): without one they are null and empty.
    """
    svc: Service = request.app.state.service
    choice, manager = svc.runtime, svc.manager
    if choice is not None:
        reason = choice.reason
    elif not svc.settings.enabled:
        reason = "workspaces are disabled (ENABLE_AGENT_WORKSPACES=false)"
    else:
        reason = f"no Docker provider on this server (WORKSPACE_PROVIDERS={','.join(svc.settings.providers)})"
    # Which replicas there are and which one leads is a map of the deployment, for callers with a key only
    # (a load balancer's check needs `status` alone).
    replica = svc.replica if who is not None else None
    capabilities = {name: _info(p.capabilities()) for name, p in sorted(manager.providers.items())} if manager else {}
    return Health(
        status="ok",
        workspaces_enabled=svc.settings.enabled,
        runtime=choice.runtime if choice else None,
        gvisor=bool(choice and choice.gvisor),
        gvisor_platform=choice.platform if choice else None,
        runsc_version=choice.version if choice else None,
        runtime_reason=reason,
        providers=list(capabilities),
        capabilities=capabilities,
        unavailable=dict(manager.unavailable) if manager else {},
        version=VERSION,
        replica=svc.settings.replica_id if who is not None else None,
        leader=replica.leader if replica else None,
        replicas=replica.alive if replica else [],
        **_e2b_urls(request, svc),
    )


def _e2b_urls(request: Request, svc: Service) -> dict[str, str]:
    if not (svc.settings.enabled and svc.settings.e2b_api):
        return {}
    api, sandbox = e2b_control.sdk_urls(str(request.base_url).rstrip("/"))
    return {"e2b_api_url": api, "e2b_sandbox_url": sandbox}


@router.get("/api/v1/providers", summary="List the providers", response_model=ProviderList, responses=errors())
def providers(request: Request, who: Owner) -> ProviderList:
    """List the providers this server is configured with (WORKSPACE_PROVIDERS): whether each can be
    used here (if not, why and how to fix it), its runtime and gVisor platform, what it can do, and
    how many workspaces it runs now. Empty with workspaces disabled.

    Needs an API key.
    """
    svc: Service = request.app.state.service
    choice, manager = svc.runtime, svc.manager
    if manager is None:
        return ProviderList(providers=[])
    active = manager.active_by_provider()
    found = []
    for name in svc.settings.providers:
        provider = manager.providers.get(name)
        if provider is None:
            reason = manager.unavailable.get(name, "not set up on this server")
            found.append(ProviderStatus(name=name, available=False, reason=reason, active=active.get(name, 0)))
            continue
        offers = provider.capabilities()
        on_gvisor = choice is not None and choice.gvisor and offers.runtime == choice.runtime
        found.append(
            ProviderStatus(
                name=name,
                available=True,
                runtime=offers.runtime,
                platform=choice.platform if on_gvisor and choice else None,
                capabilities=_info(offers),
                active=active.get(name, 0),
            )
        )
    return ProviderList(providers=found)


def _info(offers: Capabilities) -> ProviderInfo:
    fields = {field: getattr(offers, field) for field in ProviderInfo.model_fields}
    return ProviderInfo.model_validate(
        fields | {name: sorted(value) for name, value in fields.items() if isinstance(value, frozenset)}
    )


@router.get(
    "/api/v1/capacity",
    summary="Workspace capacity and the warm pool",
    response_model=Capacity,
    responses=errors((404, "Workspaces are disabled on this server (ENABLE_AGENT_WORKSPACES).")),
)
async def capacity(mgr: Manager, who: Owner) -> Capacity:
    """How many workspaces may be active at once, how many are, and the warm pool's state.

    Needs an API key."""
    pool = mgr.pool
    return Capacity(
        max_concurrent=mgr.settings.max_concurrent,
        active=sum((await in_thread(mgr.active_by_provider)).values()),
        warm_pool_size=pool.size if pool else 0,
        warm_pool_ready=await in_thread(pool.ready) if pool else 0,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=errors() | {200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, who: Owner) -> Response:
    """Return the server's metrics in Prometheus' text format.

    Needs an API key, anyone's."""
    # Any key will do (Prometheus sends one with `authorization` in its scrape config).
    svc: Service = request.app.state.service
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)
