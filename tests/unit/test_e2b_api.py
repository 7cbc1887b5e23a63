"""E2B's control plane served by agentbox, driven by the unmodified `e2b` SDK over loopback (fake providers)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from e2b import (
    ALL_TRAFFIC,
    AuthenticationException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)
from fastapi.testclient import TestClient

from tests.fake_provider import BY_NAME, FakeProvider
from tests.unit.apps import KEYS, build_app, uvicorn_serving


@pytest.fixture
def e2b_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    providers = {"gvisor": FakeProvider("gvisor")}
    with uvicorn_serving(build_app(tmp_path, providers)) as url:
        monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/envd")
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
    answer = httpx.get(f"{e2b_env}/e2b/teams", headers={"X-API-Key": KEYS["alice"]})
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


def test_a_sandbox_made_to_pause_at_its_timeout_is_paused_not_killed(e2b_env: str) -> None:
    sandbox = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause", "auto_resume": False})
    time.sleep(1.5)
    assert sandbox.is_running() is False  # traffic does not wake it
    info = sandbox.get_info()
    assert info.state == SandboxState.PAUSED
    assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}
    sandbox.connect(timeout=60)
    assert sandbox.get_info().state == SandboxState.RUNNING
    sandbox.kill()


def test_auto_resume_wakes_a_sandbox_paused_at_its_timeout_for_its_own_callers(e2b_env: str) -> None:
    sandbox = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause", "auto_resume": True})
    time.sleep(1.5)
    stranger = httpx.get(f"{e2b_env}/e2b/envd/health", headers={"E2b-Sandbox-Id": sandbox.sandbox_id})
    assert stranger.status_code == 502  # no token: nothing wakes, nothing is said
    assert Sandbox.get_info(sandbox.sandbox_id).end_at < datetime.now(UTC)
    assert sandbox.is_running() is True  # envd with the sandbox's token: resumed, with a new end
    info = sandbox.get_info()
    assert info.state == SandboxState.RUNNING
    assert info.end_at > datetime.now(UTC) + timedelta(seconds=0.5)
    sandbox.kill()


def test_the_reaper_pauses_a_sandbox_made_to_pause_at_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_app(tmp_path, {"gvisor": FakeProvider("gvisor")})
    with uvicorn_serving(app) as url:
        monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
        monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
        kept = Sandbox.create(timeout=1, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
        killed = Sandbox.create(timeout=1)
        time.sleep(1.5)
        manager = app.state.service.manager
        assert manager.reap_expired() == 1  # the other one paused, not counted as expired
        record = manager.store.get(kept.sandbox_id)
        assert record.status == "stopped" and record.memory_kept is False and record.expires_at is None
        assert manager.store.get(killed.sandbox_id).status == "deleted"
        assert kept.get_info().state == SandboxState.PAUSED


@pytest.mark.parametrize(
    ("asked", "fragment"),
    [
        ({"autoResume": {"enabled": True}}, "autoResume needs autoPause"),
        ({"autoPause": True, "autoPauseMemory": False, "autoResume": {"enabled": True}}, "filesystem-only"),
    ],
)
def test_auto_resume_that_could_not_work_is_refused(e2b_env: str, asked: dict[str, object], fragment: str) -> None:
    # (The SDK refuses these itself; other clients reach the server.)
    refused = httpx.post(
        f"{e2b_env}/e2b/v2/sandboxes", json={"templateID": "base", **asked}, headers={"X-API-Key": KEYS["alice"]}
    )
    assert refused.status_code == 400 and fragment in refused.json()["message"]
    assert Sandbox.list().next_items() == []


def test_what_agentbox_cannot_do_is_refused_not_dropped(e2b_env: str) -> None:
    with pytest.raises(SandboxException, match="mcp"):
        Sandbox.create(mcp={"github": {}})
    with pytest.raises(SandboxException, match="cannot enforce"):  # a deny list needs the egress proxy
        Sandbox.create(network={"deny_out": ["10.0.0.0/8"]})
    with pytest.raises(SandboxException, match=r"400: network\.maskRequestHost: .*not a host\[:port\]"):
        Sandbox.create(network={"mask_request_host": "custom-host.example.com/${PORT}"})
    assert Sandbox.list().next_items() == []  # nothing was made


@pytest.fixture
def by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:
    """A provider that enforces policies by name (as the Docker provider with its egress proxy)."""
    provider = FakeProvider("gvisor", capabilities=BY_NAME)
    with uvicorn_serving(build_app(tmp_path, {"gvisor": provider})) as url:
        monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/envd")
        monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
        monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
        yield provider


def test_network_on_create_and_update_reaches_the_provider_and_shows_in_get_info(by_name: FakeProvider) -> None:
    sandbox = Sandbox.create(network={"deny_out": [ALL_TRAFFIC], "allow_out": ["api.example.com", "1.2.3.4"]})
    info = sandbox.get_info()
    assert info.allow_internet_access is False  # everything but allowOut denied
    assert info.network is not None
    assert (info.network.get("allow_out"), info.network.get("deny_out")) == (
        ["api.example.com", "1.2.3.4"],
        [ALL_TRAFFIC],
    )
    ref = next(ref for ref, s in by_name.sandboxes.items() if s.spec.id == sandbox.sandbox_id)

    sandbox.update_network({"deny_out": ["8.8.8.8"]})
    policy = by_name.networks[ref]  # the running sandbox's proxy holds the new policy on return
    assert [e.target for e in policy.deny] == ["8.8.8.8"] and policy.allow == [] and policy.default == "allow"
    info = sandbox.get_info()
    assert info.allow_internet_access is True and info.network is not None
    assert info.network.get("deny_out") == ["8.8.8.8"] and not info.network.get("allow_out")

    sandbox.update_network({})  # everything left out is cleared: the internet again
    assert by_name.networks[ref] == "egress"
    assert sandbox.get_info().allow_internet_access is True

    sandbox.update_network({"allow_internet_access": False})  # at run time: a policy that denies all
    assert [e.target for e in by_name.networks[ref].deny] == [ALL_TRAFFIC]
    assert sandbox.get_info().allow_internet_access is False


def test_network_refusals_name_the_field_and_another_owners_sandbox_is_not_found(
    by_name: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = Sandbox.create(allow_internet_access=False)
    assert sandbox.get_info().allow_internet_access is False
    with pytest.raises(SandboxException, match="none"):  # no interface at all: a new sandbox is needed
        sandbox.update_network({"allow_out": ["example.com"]})
    other = Sandbox.create()
    with pytest.raises(SandboxException, match=r"400: network\.allowOut\[0\]"):
        other.update_network({"allow_out": ["example.com:443"]})
    with pytest.raises(SandboxException, match=r"400: network\.egressProxy"):
        other.update_network({"egress_proxy": {"address": "socks5://10.0.0.1:1080"}})
    # A secret the owner does not have: refused before anything changes.
    rules = {"api.example.com": [{"transform": {"headers": {"Authorization": "Bearer ${e2b.secrets.nope}"}}}]}
    with pytest.raises(SandboxException, match="nope"):
        other.update_network({"rules": rules})  # type: ignore[typeddict-item]
    url = os.environ["E2B_API_URL"]
    put = f"{url}/sandboxes/{other.sandbox_id}/network"
    assert httpx.put(put, json={"denyOut": ["8.8.8.8"]}).status_code == 401
    bob = httpx.put(put, json={"denyOut": ["8.8.8.8"]}, headers={"X-API-Key": KEYS["bob"]})
    assert bob.status_code == 404 and other.sandbox_id in bob.json()["message"]
    assert httpx.get(f"{url}/sandboxes/{other.sandbox_id}", headers={"X-API-Key": KEYS["bob"]}).status_code == 404
    assert other.get_info().allow_internet_access is True  # untouched by all of that
    assert [c for c in by_name.calls if c[0] == "set_network"] == []


def test_wrong_sandbox_tokens_count_as_refused_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A guesser of envd access tokens or traffic tokens is stopped like a guesser of API keys.
    app = build_app(tmp_path, {"gvisor": FakeProvider("gvisor")}, WORKSPACE_RATE_LIMIT_FAILURES="3/minute")
    with uvicorn_serving(app) as url:
        monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/envd")
        monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
        sandbox = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
        envd = {"E2b-Sandbox-Id": sandbox.sandbox_id}
        files = f"{url}/e2b/envd/files"
        good = {**envd, "X-Access-Token": sandbox._envd_access_token or ""}
        assert httpx.get(files, params={"path": "/"}, headers=good).status_code != 401
        wrong_envd = {**envd, "X-Access-Token": "key-0000000000000000.guess"}
        assert httpx.get(files, params={"path": "/"}, headers=wrong_envd).status_code == 401
        port = {**envd, "E2b-Sandbox-Port": "8080", "E2B-Traffic-Access-Token": "guess"}
        assert httpx.get(f"{url}/e2b/envd/", headers=port).status_code == 502  # E2B's "not open to you"
        assert httpx.get(files, params={"path": "/"}, headers=wrong_envd).status_code == 401
        blocked = httpx.get(files, params={"path": "/"}, headers=good)  # the address, whatever it brings now
        assert blocked.status_code == 429 and "refused credentials" in blocked.json()["detail"]
