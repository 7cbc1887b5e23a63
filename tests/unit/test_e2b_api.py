"""E2B's control plane served by agentbox, driven by the unmodified `e2b` SDK over loopback (fake providers)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from e2b import AuthenticationException, Sandbox, SandboxException, SandboxNotFoundException, SandboxQuery
from e2b.sandbox.sandbox_api import SandboxState
from fastapi.testclient import TestClient

from tests.fake_provider import FakeProvider
from tests.unit.apps import KEYS, build_app, uvicorn_serving


@pytest.fixture
def e2b_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    providers = {"gvisor": FakeProvider("gvisor")}
    with uvicorn_serving(build_app(tmp_path, providers)) as url:
        monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", url)
        monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
        monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
        yield url


def test_create_info_timeout_connect_and_kill(e2b_env: str) -> None:
    before = datetime.now(UTC)
    sandbox = Sandbox.create(timeout=120, metadata={"sandbox_test_id": "t1"}, envs={"FOO": "bar"})
    info = sandbox.get_info()
    assert (info.sandbox_id, info.template_id, info.state) == (sandbox.sandbox_id, "base", SandboxState.RUNNING)
    assert info.metadata == {"sandbox_test_id": "t1"}
    assert before + timedelta(seconds=110) < info.end_at < before + timedelta(seconds=130)

    sandbox.set_timeout(600)
    assert sandbox.get_info().end_at > before + timedelta(seconds=590)
    Sandbox.connect(sandbox.sandbox_id, timeout=60)  # connect only ever extends
    assert sandbox.get_info().end_at > before + timedelta(seconds=590)

    assert sandbox.kill() is True
    assert Sandbox.kill(sandbox.sandbox_id) is False  # gone: the SDK's "not found"


def test_list_filters_by_metadata_and_pages(e2b_env: str) -> None:
    made = [Sandbox.create(metadata={"group": "a" if i < 3 else "b"}) for i in range(4)]
    first = Sandbox.list(query=SandboxQuery(metadata={"group": "a"}), limit=2)
    page = first.next_items()
    assert len(page) == 2 and first.has_next
    rest = first.next_items()
    assert len(rest) == 1 and not first.has_next
    assert {s.sandbox_id for s in page + rest} == {s.sandbox_id for s in made[:3]}
    for sandbox in made:
        sandbox.kill()


def test_a_wrong_key_is_e2bs_401(e2b_env: str) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="not-an-agentbox-key-000000")


def test_an_unknown_sandbox_is_e2bs_not_found(e2b_env: str) -> None:
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("ws-0000000000000000")
    answer = httpx.get(f"{e2b_env}/e2b/sandboxes/ws-0000000000000000", headers={"X-API-Key": KEYS["alice"]})
    assert answer.status_code == 404 and set(answer.json()) == {"code", "message"}


def test_the_endpoint_can_be_turned_off(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, {"gvisor": FakeProvider("gvisor")}, WORKSPACE_E2B_API="false")) as app:
        assert app.get("/e2b/v2/sandboxes", headers={"X-API-Key": KEYS["alice"]}).status_code == 404
        assert app.get("/e2b/envd/health", headers={"E2b-Sandbox-Id": "ws-0000000000000000"}).status_code == 404
        health = app.get("/api/v1/health").json()
        assert (health["e2b_api_url"], health["e2b_sandbox_url"]) == (None, None)


def test_what_e2b_does_not_offer_is_e2bs_404(e2b_env: str) -> None:
    answer = httpx.get(f"{e2b_env}/e2b/volumes", headers={"X-API-Key": KEYS["alice"]})
    assert answer.status_code == 404 and "not offered" in answer.json()["message"]
    assert httpx.get(f"{e2b_env}/e2b/envd/elsewhere").status_code == 404


def test_a_paused_sandbox_waits_without_an_end_until_connect(e2b_env: str) -> None:
    sandbox = Sandbox.create(timeout=60)
    sandbox.pause()
    info = sandbox.get_info()
    assert info.state == SandboxState.PAUSED
    assert (
        Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()[0].sandbox_id == sandbox.sandbox_id
    )
    Sandbox.connect(sandbox.sandbox_id, timeout=60)
    assert sandbox.get_info().state == SandboxState.RUNNING
    assert sandbox.get_info().end_at < datetime.now(UTC) + timedelta(seconds=70)
    sandbox.kill()


def test_what_agentbox_cannot_do_is_refused_not_dropped(e2b_env: str) -> None:
    with pytest.raises(SandboxException, match="autoPause"):
        Sandbox.create(lifecycle={"on_timeout": "pause"})
    with pytest.raises(SandboxException, match="allow list"):
        Sandbox.create(network={"deny_out": ["10.0.0.0/8"]})
    assert Sandbox.list().next_items() == []  # nothing was made
