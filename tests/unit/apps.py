"""The app over fake providers, as the unit tests of the API, of MCP and of the E2B endpoint run it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from agentbox.config import load_settings
from agentbox.db.store import Store
from agentbox.server.app import create_app
from agentbox.server.service import Service
from agentbox.workspaces.manager import WorkspaceManager
from tests.fake_provider import FakeProvider

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef00"}


def build_app(
    tmp_path: Path,
    providers: Mapping[str, FakeProvider] | None,
    unavailable: Mapping[str, str] | None = None,
    **settings: str,
) -> FastAPI:
    """The app over a service with a manager over `providers` (and `unavailable` ones), or none
    (workspaces disabled); `settings` are more variables. The app closes the service at shutdown."""
    loaded = load_settings(
        ENABLE_AGENT_WORKSPACES="true" if providers is not None else "false",
        WORKSPACE_DATA_DIR=str(tmp_path),
        WORKSPACE_API_KEYS=",".join(f"{owner}:{key}" for owner, key in KEYS.items()),
        **settings,
    )
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    service = Service.over(loaded, store)
    service.sync_keys()
    service.manager = WorkspaceManager(loaded, store, providers, unavailable=unavailable) if providers else None
    return create_app(loaded, service)


@contextmanager
def uvicorn_serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in a thread; its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop (the app's lifespan did not end)"
