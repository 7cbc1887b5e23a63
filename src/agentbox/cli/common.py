"""What every `agentbox` client command shares: the server options, the client, and errors without tracebacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console

from agentbox.client import APIError, Client

T = TypeVar("T")
console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="AGENTBOX_URL", help="server URL")]
KeyOption = Annotated[str, typer.Option("--api-key", envvar="AGENTBOX_API_KEY", help="API key (or AGENTBOX_API_KEY)")]


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def require_key(api_key: str) -> str:
    """`api_key`; exits with a message (code 2) when none was given."""
    if not api_key:
        fail("no API key: pass --api-key or set AGENTBOX_API_KEY", 2)
    return api_key


def api_client(url: str, api_key: str) -> Client:
    return Client(url, require_key(api_key))


def request(url: str, api_key: str, call: Callable[[Client], T]) -> T:
    """`call(client)` with a client of the server at `url`, closed after; errors as `guarded` says."""
    with api_client(url, api_key) as client:
        return guarded(lambda: call(client))


def guarded(function: Callable[[], T]) -> T:
    """`function()`, its API and connection errors turned into a message and an exit code."""
    try:
        return function()
    except APIError as exc:
        fail(f"{exc.message} (HTTP {exc.status_code})")
    except httpx.TransportError as exc:
        fail(f"cannot reach the server: {exc}; is `agentbox serve` running? (--url, AGENTBOX_URL)")
    except httpx.HTTPError as exc:  # e.g. a redirect loop: whatever answers is not an agentbox server
        fail(f"talking to the server failed: {exc}; check --url (AGENTBOX_URL)")
