"""E2B's exceptions become agentbox's errors, each with the status and hint a user needs."""

from __future__ import annotations

import e2b
import httpx
import pytest

from agentbox.errors import BadRequest, FileError, ProviderError, ProviderUnavailable, WorkspaceGone
from agentbox.providers.e2b import e2b_errors


@pytest.mark.parametrize(
    ("raised", "expected", "status", "says"),
    [
        (e2b.SandboxNotFoundException("gone"), WorkspaceGone, 410, "no longer has the sandbox"),
        (e2b.FileNotFoundException("no file"), FileError, 404, "ENOENT"),
        (e2b.NotEnoughSpaceException("full"), FileError, 507, "ENOSPC"),
        (e2b.InvalidArgumentException("bad cwd"), BadRequest, 400, "bad cwd"),
        (e2b.TemplateException("no template x"), BadRequest, 400, "no template x"),
        (e2b.AuthenticationException("401"), ProviderError, 502, "E2B_API_KEY"),
        (e2b.RateLimitException("slow down"), ProviderUnavailable, 503, "try again"),
        (e2b.TimeoutException("late"), ProviderUnavailable, 503, "in time"),
        (e2b.SandboxException("403: open /etc/x: permission denied"), FileError, 403, "EACCES"),
        (e2b.SandboxException("500: boom"), ProviderError, 502, "boom"),
        (httpx.ConnectError("refused"), ProviderUnavailable, 503, "cannot be reached"),
    ],
)
def test_sdk_errors_map_to_ours(raised: Exception, expected: type, status: int, says: str) -> None:
    with pytest.raises(expected) as error, e2b_errors("doing it", "/workspace/x"):
        raise raised
    assert error.value.status_code == status and says in error.value.detail
