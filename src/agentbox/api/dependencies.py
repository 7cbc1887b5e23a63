"""What route handlers take from a request: the manager, the caller (by bearer key), the GitHub service, a path.

Also `in_thread`, how handlers call the manager's blocking methods without blocking the event loop.
"""

import hmac
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentbox.errors import NotFound, Unauthorized
from agentbox.github.service import GitHub
from agentbox.manager import WorkspaceManager
from agentbox.schemas import AbsolutePath
from agentbox.usage import UsageHistory

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


async def owner(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The owner whose API key the request bears; 401 without a key or with an unknown one."""
    if credentials is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` (keys come from WORKSPACE_API_KEYS)")
    found = owner_of_key(request.app.state.service.settings.owners_by_key, credentials.credentials)
    if found is None:
        raise Unauthorized("invalid API key: use one of the keys in the server's WORKSPACE_API_KEYS")
    request.state.owner = found  # for the audit trail
    return found


async def owner_of_request(request: Request) -> str:
    """`owner` outside a route's dependencies (an ASGI endpoint such as /mcp): the same checks, the same 401s."""
    return await owner(request, await _bearer(request))


def owner_of_key(owners_by_key: dict[str, str], presented: str) -> str | None:
    """Whose key `presented` is, if anyone's."""
    found: str | None = None
    # Compare against every key, in constant time each, so timing says nothing about which matched.
    for key, key_owner in owners_by_key.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = key_owner
    return found


async def github(request: Request) -> GitHub:
    """The GitHub App service; 404 when no encryption key is configured for it."""
    found: GitHub | None = request.app.state.service.github
    if found is None:
        raise NotFound(
            "GitHub Apps are not configured on this server: set GITHUB_APP_ENCRYPTION_KEY "
            "(32 random bytes, hex or base64) and restart it"
        )
    return found


async def usage_history(request: Request) -> UsageHistory | None:
    """The server's record of workspaces' CPU and memory; None when WORKSPACE_USAGE_INTERVAL=0."""
    found: UsageHistory | None = request.app.state.service.usage
    return found


Manager = Annotated[WorkspaceManager, Depends(manager)]
History = Annotated[UsageHistory | None, Depends(usage_history)]
GitHubApps = Annotated[GitHub, Depends(github)]
# Handlers list `Manager` before `Owner` so that a disabled server answers 404 before asking for a key.
Owner = Annotated[str, Depends(owner)]
WorkspacePath = Annotated[AbsolutePath, Query(description="absolute path inside the workspace")]
