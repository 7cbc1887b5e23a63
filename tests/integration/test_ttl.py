"""TTL expiry of ephemeral workspaces, and renewing it, against a real engine."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import docker
import pytest

from agentbox.client import APIError
from agentbox.db.store import Store

from .conftest import Server, eventually

SECOND = 1 / 86400  # in days


def test_expired_workspaces_are_destroyed_and_recorded_persistent_ones_stay(
    reaping: Server, docker_client: docker.DockerClient
) -> None:
    with reaping.client() as alice:
        short = alice.create(ttl_days=3 * SECOND)
        persistent = alice.create(ephemeral=False)
        assert persistent.expires_at is None and persistent.ttl_days is None
        lifetime = short.expires_at - short.created_at
        assert abs(lifetime.total_seconds() - 3) < 0.01

        # Gone within a few reaper rounds after its three seconds: record, container and disk.
        eventually(lambda: short.id not in reaping.containers(docker_client), timeout=30)
        with pytest.raises(APIError) as error:
            alice.get(short.id)
        assert error.value.status_code == 404
        assert short.id not in reaping.disks()
        assert reaping.metrics()["agentbox_workspace_expiries_total"] == 1
        store = Store(f"sqlite:///{reaping.data_dir / 'agentbox.db'}")
        try:
            assert [e.kind for e in store.events(short.id)][-1] == "expired"
        finally:
            store.close()

        assert alice.get(persistent.id).status == "running"
        assert alice.exec(persistent.id, "echo here").stdout == "here\n"
        alice.delete(persistent.id)


def test_ttl_days_takes_fractions_and_defaults_to_the_setting(reaping: Server) -> None:
    with reaping.client() as alice:
        half = alice.create(ttl_days=0.5)
        default = alice.create()
        try:
            assert half.expires_at - half.created_at == timedelta(hours=12)
            assert default.ttl_days == 30  # WORKSPACE_DEFAULT_TTL_DAYS
            assert default.expires_at - default.created_at == timedelta(days=30)
        finally:
            alice.delete(half.id)
            alice.delete(default.id)


def test_extend_renews_the_ttl_from_now(reaping: Server) -> None:
    with reaping.client() as alice:
        workspace = alice.create(ttl_days=4 * SECOND)
        extended = alice.extend(workspace.id, ttl_days=1)
        assert extended.ttl_days == 1
        assert extended.expires_at - datetime.now().astimezone() > timedelta(hours=23)
        time.sleep(6)  # past the original four seconds, several reaper rounds
        assert alice.get(workspace.id).status == "running"

        # Without a body it renews by the workspace's own TTL.
        again = alice.extend(workspace.id)
        assert again.ttl_days == 1 and again.expires_at > extended.expires_at

        persistent = alice.create(ephemeral=False)
        with pytest.raises(APIError) as error:
            alice.extend(persistent.id)
        assert error.value.status_code == 409 and "never expires" in str(error.value.detail)
        with pytest.raises(APIError) as error:
            alice.extend(workspace.id, ttl_days=-1)
        assert error.value.status_code == 422
        alice.delete(workspace.id)
        alice.delete(persistent.id)
