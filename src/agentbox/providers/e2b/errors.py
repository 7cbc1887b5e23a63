"""The E2B SDK's exceptions as agentbox's errors."""

from collections.abc import Iterator
from contextlib import contextmanager

import e2b
import httpx

from agentbox.errors import BadRequest, FileError, ProviderError, ProviderUnavailable, WorkspaceGone


@contextmanager
def e2b_errors(what: str, path: str | None = None) -> Iterator[None]:
    """Turn the SDK's exceptions into provider errors that say what to do."""
    try:
        yield
    except (e2b.SandboxNotFoundException, e2b.SandboxNotRunningException) as exc:
        raise WorkspaceGone(f"{what}: E2B no longer has the sandbox ({exc})") from None
    except e2b.FileNotFoundException as exc:
        raise FileError("ENOENT", str(exc), path or "") from None
    except e2b.NotEnoughSpaceException as exc:
        raise FileError("ENOSPC", str(exc), path or "") from None
    except (e2b.InvalidArgumentException, e2b.TemplateException) as exc:
        raise BadRequest(f"{what}: E2B refused it: {exc}") from None
    except e2b.AuthenticationException:
        raise ProviderError(f"{what}: E2B refused the API key: check E2B_API_KEY") from None
    except (e2b.RateLimitException, e2b.ServiceBusyException) as exc:
        raise ProviderUnavailable(f"{what}: E2B is busy or rate-limiting ({exc}); try again shortly") from None
    except (e2b.TimeoutException, e2b.SandboxUnreachableException) as exc:
        raise ProviderUnavailable(f"{what}: E2B did not answer in time ({exc}); try again") from None
    except e2b.SandboxException as exc:
        if "permission denied" in str(exc).lower():  # envd answers 403, which the SDK does not map
            raise FileError("EACCES", "permission denied", path or "") from None
        raise ProviderError(f"{what}: E2B said: {exc}") from None
    except (httpx.HTTPError, OSError) as exc:  # the API client's (httpx) and envd's transports
        raise ProviderUnavailable(f"{what}: E2B cannot be reached ({exc}); check E2B_DOMAIN / E2B_API_URL") from None
