"""GitHub routes: register, list, get and delete your GitHub Apps; push a workspace's branch with one."""

from fastapi import APIRouter, Response

from agentbox.api.dependencies import GitHubApps, Manager, Owner, in_thread
from agentbox.schemas import GitHubAppList, GitHubAppOut, PushOut, RegisterApp

router = APIRouter(prefix="/api/v1", tags=["github"])


@router.post("/github/apps", status_code=201, response_model=GitHubAppOut)
async def register_github_app(body: RegisterApp, apps: GitHubApps, who: Owner) -> GitHubAppOut:
    """Register a GitHub App's credentials (201); its private key and webhook secret are stored encrypted.

    Returns the registration without its secrets; its `id` (gh-...) is what `repo.app` names
    at create. Errors: 404 when GitHub Apps are not configured on this server
    (GITHUB_APP_ENCRYPTION_KEY), 422 for a malformed body or a key that is not an RSA PEM key.
    """
    return GitHubAppOut.of(await in_thread(apps.register, who, body))


@router.get("/github/apps", response_model=GitHubAppList)
async def list_github_apps(apps: GitHubApps, who: Owner) -> GitHubAppList:
    """List your registered GitHub Apps, oldest first, without their secrets.

    Errors: 404 when GitHub Apps are not configured on this server.
    """
    return GitHubAppList(apps=[GitHubAppOut.of(a) for a in await in_thread(apps.apps, who)])


@router.get("/github/apps/{app_id}", response_model=GitHubAppOut)
async def get_github_app(app_id: str, apps: GitHubApps, who: Owner) -> GitHubAppOut:
    """Return one of your registered GitHub Apps, without its secrets.

    Errors: 404 when there is no such App of yours, or GitHub Apps are not configured.
    """
    return GitHubAppOut.of(await in_thread(apps.app, who, app_id))


@router.delete("/github/apps/{app_id}", status_code=204)
async def delete_github_app(app_id: str, apps: GitHubApps, who: Owner) -> Response:
    """Forget a registered GitHub App and its secrets (204, no body).

    Errors: 404 when there is no such App of yours, or GitHub Apps are not configured.
    """
    await in_thread(apps.delete, who, app_id)
    return Response(status_code=204)


@router.post("/workspaces/{workspace_id}/git/push", response_model=PushOut)
async def git_push(workspace_id: str, mgr: Manager, who: Owner) -> PushOut:
    """Push the current branch of the workspace's checkout (`repo` at create) to GitHub with its App.

    Returns the repository, the branch and the commit pushed. Errors: 404 when the workspace
    is not yours, 409 when it has no repository or no branch with a commit to push, or is not
    running; 400 when GitHub Apps are not configured; 502 when GitHub refuses the push.
    """
    workspace, branch, commit = await in_thread(mgr.git_push, who, workspace_id)
    assert workspace.repo is not None
    return PushOut(repository=workspace.repo["repository"], branch=branch, commit=commit)
