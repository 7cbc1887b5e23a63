"""What route handlers take from a request: the manager, the caller (by bearer key), the GitHub service, the
vault, a path.

Also `in_thread`, how handlers call the manager's blocking methods without blocking the event loop.
"""

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Query, Request
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentbox.auth.keys import ApiKeys, Caller
from agentbox.errors import Forbidden, NotFound, Unauthorized
from agentbox.github.service import GitHub
from agentbox.vault import Vault
from agentbox.wire.common import AbsolutePath
from agentbox.workspaces.handle import WorkspaceHandle
from agentbox.workspaces.manager import WorkspaceManager
from agentbox.workspaces.usage import UsageHistory

T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False)


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run `function(*args)` in a worker thread and return its result (or raise its exception)."""
    return await anyio.to_thread.run_sync(lambda: function(*args))


# Dependencies are `async def` though they do not await: plain CPU work, and a sync
# dependency would cost a thread hop per request.


async def manager(request: Request) -> WorkspaceManager:
    """The service's workspace manager; 404 when workspaces are disabled on this server."""
    found: WorkspaceManager | None = request.app.state.service.manager
    if found is None:
        raise NotFound("agent workspaces are disabled on this server: set ENABLE_AGENT_WORKSPACES=true and restart it")
    return found


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """Who the request's API key belongs to; 401 without a key or with one that does not work."""
    service = request.app.state.service
    if credentials is None:
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (an admin makes keys: agentbox keys create)"
        )
    found = await authenticated(service.keys, credentials.credentials)
    if found is None:
        refused(request)
        raise Unauthorized(
            "invalid API key: it is unknown or was revoked; use a key of WORKSPACE_API_KEYS or one an admin made "
            "(agentbox keys create)"
        )
    return watched(request, found)


async def caller_if_any(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller | None:
    """The caller of a route open to everyone: None without a key; a key sent must work (401 as `caller`
    says), so a wrong one is counted like anywhere else and the route is no oracle for guessing keys."""
    return None if credentials is None else await caller(request, credentials)


async def owner(found: Annotated[Caller, Depends(caller)]) -> str:
    """The owner whose API key the request bears (see `caller`)."""
    return found.owner


async def admin(found: Annotated[Caller, Depends(caller)]) -> Caller:
    """The caller, when their key is an admin's; 403 otherwise."""
    if not found.admin:
        raise Forbidden("managing API keys needs an admin's key (WORKSPACE_ADMINS, or a key made with admin=true)")
    return found


async def caller_of_request(request: Request) -> Caller:
    """`caller` outside a route's dependencies (an ASGI endpoint such as /mcp): the same checks, the same 401s."""
    return await caller(request, await _bearer(request))


async def authenticated(keys: ApiKeys, presented: str) -> Caller | None:
    """The caller of key `presented`, from the cache when it knows, else from the database in a worker thread."""
    hit, found = keys.peek(presented)
    return found if hit else await in_thread(keys.authenticate, presented)


def watched(connection: HTTPConnection, found: Caller) -> Caller:
    """`found`, now known as the connection's caller: to the audit trail, and to the watch that ends the
    connection if its key is revoked (web/revocations.py)."""
    connection.state.owner = found.owner
    connection.state.caller = found
    connection.app.state.revocations.watch(connection.scope, found.key_id)
    return found


def refused(connection: HTTPConnection) -> None:
    """Count a refused credential against the client's address (rate limits on failed authentication)."""
    client = connection.client
    connection.app.state.service.throttle.failure(client.host if client else "")


async def github(request: Request) -> GitHub:
    """The GitHub App service; 404 when no encryption key is configured for it."""
    found: GitHub | None = request.app.state.service.github
    if found is None:
        raise NotFound(
            "GitHub Apps are not configured on this server: set GITHUB_APP_ENCRYPTION_KEY "
            "(32 random bytes, hex or base64) and restart it"
        )
    return found


async def vault(request: Request) -> Vault:
    """The owners' secrets; 404 when no encryption key is configured to seal them (the GitHub Apps' key)."""
    found: Vault | None = request.app.state.service.vault
    if found is None:
        raise NotFound(
            "secrets are not configured on this server: set GITHUB_APP_ENCRYPTION_KEY (32 random bytes, hex or "
            "base64; it seals secrets and GitHub Apps' keys alike) and restart it"
        )
    return found


async def usage_history(request: Request) -> UsageHistory | None:
    """The server's record of workspaces' CPU and memory; None when WORKSPACE_USAGE_INTERVAL=0."""
    found: UsageHistory | None = request.app.state.service.usage
    return found


Manager = Annotated[WorkspaceManager, Depends(manager)]
History = Annotated[UsageHistory | None, Depends(usage_history)]
GitHubApps = Annotated[GitHub, Depends(github)]
Secrets = Annotated[Vault, Depends(vault)]
# Handlers list `Manager` before `Owner` so that a disabled server answers 404 before asking for a key.
Owner = Annotated[str, Depends(owner)]
Who = Annotated[Caller, Depends(caller)]
Anyone = Annotated[Caller | None, Depends(caller_if_any)]
Admin = Annotated[Caller, Depends(admin)]
WorkspacePath = Annotated[AbsolutePath, Query(description="absolute path inside the workspace")]


# Sync on purpose: they read the database, so FastAPI runs them in a worker thread.


def in_use(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceHandle:
    """The caller's running workspace named in the path, to work in (a use: its expiry slides)."""
    return mgr.use(who, workspace_id)


def looked_at(workspace_id: str, mgr: Manager, who: Owner) -> WorkspaceHandle:
    """The caller's running workspace named in the path, for a look (its expiry stays)."""
    return mgr.look(who, workspace_id)


InUse = Annotated[WorkspaceHandle, Depends(in_use)]
LookedAt = Annotated[WorkspaceHandle, Depends(looked_at)]
