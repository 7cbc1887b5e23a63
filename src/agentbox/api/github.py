"""GitHub routes: register, list, get and delete your GitHub Apps; push a workspace's branch with one."""

from fastapi import APIRouter, Response

from agentbox.db.models import GitHubApp
from agentbox.github.app import git_url_of
from agentbox.web.dependencies import GitHubApps, Manager, Owner, in_thread
from agentbox.web.openapi import errors
from agentbox.wire.github import GitHubAppList, GitHubAppOut, PushOut, RegisterApp

router = APIRouter(prefix="/api/v1", tags=["github"])

_UNCONFIGURED = "GitHub Apps are not configured on this server (GITHUB_APP_ENCRYPTION_KEY)"
_NO_SUCH_APP = (404, f"No such App of yours, or {_UNCONFIGURED}.")


def app_out(app: GitHubApp) -> GitHubAppOut:
    """A registration's row as the API shows it: without its secrets."""
    return GitHubAppOut(
        id=app.id,
        app_id=app.app_id,
        api_url=app.api_url,
        git_url=app.git_url or git_url_of(app.api_url),
        has_webhook_secret=app.webhook_secret is not None,
        created_at=app.created_at,
    )


@router.post(
    "/github/apps",
    summary="Register a GitHub App",
    status_code=201,
    response_model=GitHubAppOut,
    responses=errors(
        (400, "`api_url` is refused: a host on the server's own network that the operator has not allowed."),
        (404, f"{_UNCONFIGURED}."),
        413,
        (422, "A malformed body, or a private key that is not an RSA PEM key without a passphrase."),
    ),
)
async def register_github_app(body: RegisterApp, apps: GitHubApps, who: Owner) -> GitHubAppOut:
    """Register a GitHub App's credentials (201); its private key and webhook secret are stored encrypted.

    Returns the registration without its secrets; its `id` (gh-...) is what `repo.app` names
    at create.

    Needs an API key; the App is its owner's.
    """
    return app_out(await in_thread(apps.register, who, body))


@router.get(
    "/github/apps",
    summary="List your GitHub Apps",
    response_model=GitHubAppList,
    responses=errors((404, f"{_UNCONFIGURED}.")),
)
async def list_github_apps(apps: GitHubApps, who: Owner) -> GitHubAppList:
    """List your registered GitHub Apps, oldest first, without their secrets.

    Needs an API key.
    """
    return GitHubAppList(apps=[app_out(a) for a in await in_thread(apps.apps, who)])


@router.get(
    "/github/apps/{app_id}", summary="Get a GitHub App", response_model=GitHubAppOut, responses=errors(_NO_SUCH_APP)
)
async def get_github_app(app_id: str, apps: GitHubApps, who: Owner) -> GitHubAppOut:
    """Return one of your registered GitHub Apps, without its secrets.

    Needs an API key: the App's owner's.
    """
    return app_out(await in_thread(apps.app, who, app_id))


@router.delete("/github/apps/{app_id}", summary="Forget a GitHub App", status_code=204, responses=errors(_NO_SUCH_APP))
async def delete_github_app(app_id: str, apps: GitHubApps, who: Owner) -> Response:
    """Forget a registered GitHub App and its secrets (204, no body).

    Needs an API key: the App's owner's.
    """
    await in_thread(apps.delete, who, app_id)
    return Response(status_code=204)


@router.post(
    "/workspaces/{workspace_id}/git/push",
    summary="Push the workspace's branch to GitHub",
    response_model=PushOut,
    responses=errors(
        (400, f"{_UNCONFIGURED}."),
        404,
        (
            409,
            "The workspace is not running, was not created with a repository, or has no branch with a commit to push.",
        ),
        410,
        (502, "GitHub refused the push or could not be reached (the detail says which), or the provider failed."),
        (503, "The App's private key cannot be decrypted with the server's keys, or the provider is unreachable."),
    ),
)
async def git_push(workspace_id: str, mgr: Manager, who: Owner) -> PushOut:
    """Push the current branch of the workspace's checkout (`repo` at create) to GitHub with its App.

    Returns the repository, the branch and the commit pushed.

    Needs an API key: the workspace's owner's.
    """
    workspace, branch, commit = await in_thread(mgr.git_push, who, workspace_id)
    assert workspace.repo is not None
    return PushOut(repository=workspace.repo["repository"], branch=branch, commit=commit)
