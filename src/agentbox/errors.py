"""Errors that reach users: each carries the HTTP status it maps to and a `detail` saying what to fix.

One hierarchy for the whole service, providers included; the API turns any of them into
`{"detail": ...}` with its status:

    AgentboxError (500)
    ├── BadRequest (400)             the request cannot work as given: fix it and send it again
    ├── Unauthorized (401)
    ├── Forbidden (403)              a credential that does not grant this (a preview token)
    ├── NotFound (404)
    ├── Conflict (409)               the workspace is not in a state that allows it
    ├── PayloadTooLarge (413)
    ├── Unprocessable (422)
    ├── TooManyWorkspaces (429)
    └── ProviderError (502)          the provider could not do what was asked
        ├── ProviderUnavailable (503)  it cannot be reached now: retry
        ├── WorkspaceGone (410)        it no longer has the workspace
        └── FileError (by errno)       a file operation inside the workspace failed
"""

from __future__ import annotations

from typing import ClassVar


class AgentboxError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(AgentboxError):
    status_code = 400


class Unauthorized(AgentboxError):
    status_code = 401


class Forbidden(AgentboxError):
    status_code = 403


class NotFound(AgentboxError):
    status_code = 404


class Conflict(AgentboxError):
    status_code = 409


class PayloadTooLarge(AgentboxError):
    status_code = 413


class Unprocessable(AgentboxError):
    status_code = 422


class TooManyWorkspaces(AgentboxError):
    status_code = 429


class ProviderError(AgentboxError):
    status_code = 502


class ProviderUnavailable(ProviderError):
    status_code = 503


class WorkspaceGone(ProviderError):
    status_code = 410


class FileError(ProviderError):
    """`errno_name` (ENOENT...) decides the status: a missing path is a 404, a full disk a 507."""

    _STATUS: ClassVar[dict[str, int]] = {
        "ENOENT": 404,
        "ENOTDIR": 404,
        "EACCES": 403,
        "EPERM": 403,
        "EISDIR": 409,
        "EEXIST": 409,
        "EAGAIN": 409,
    }

    def __init__(self, errno_name: str, message: str, path: str) -> None:
        super().__init__(f"{path}: {message} ({errno_name})")
        self.errno_name = errno_name
        self.status_code = 507 if errno_name == "ENOSPC" else self._STATUS.get(errno_name, 400)


def reason_of(exc: BaseException) -> str:
    """What went wrong, for a record or a log line: the detail of our own errors, else type and message."""
    return getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
