"""Errors that reach users: each carries the HTTP status it maps to and a `detail` saying what to fix."""

from __future__ import annotations


class AgentboxError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(AgentboxError):
    status_code = 404


class Conflict(AgentboxError):
    status_code = 409


class BadRequest(AgentboxError):
    status_code = 400


class TooManyWorkspaces(AgentboxError):
    status_code = 429


class PayloadTooLarge(AgentboxError):
    status_code = 413


class Unauthorized(AgentboxError):
    status_code = 401


class Unprocessable(AgentboxError):
    status_code = 422


def reason_of(exc: BaseException) -> str:
    """What went wrong, for a record or a log line: the detail of our own errors, else type and message."""
    return getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
