"""Secrets stay out of the server's log: API keys, and env values given to workspaces."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agentbox.client import APIError

from .conftest import KEYS, Server


def test_the_log_never_holds_api_keys_or_workspace_env_values(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    secret_env, secret_exec, wrong_key = "env-value-Zq81xT", "exec-value-Hb27pL", "wrong-key-0123456789abcdef"
    try:
        with server.client() as alice:
            workspace_id = alice.create(env={"TOKEN": secret_env}).id
            result = alice.exec(workspace_id, "echo $TOKEN $OTHER", env={"OTHER": secret_exec})
            assert result.stdout.split() == [secret_env, secret_exec]
            # Failed requests are logged too; they must not carry the values either.
            with pytest.raises(APIError) as error:
                alice.exec(workspace_id, "true", env={"OTHER": secret_exec}, cwd="/nonexistent/dir")
            assert error.value.status_code == 400
            alice.delete(workspace_id)
        refused = httpx.get(f"{server.url}/api/v1/workspaces", headers={"Authorization": f"Bearer {wrong_key}"})
        assert refused.status_code == 401 and wrong_key not in refused.text
    finally:
        server.stop()
    log = server.log()
    assert "POST /api/v1/workspaces" in log and "401 Unauthorized" in log  # the requests are in the log
    for secret in (secret_env, secret_exec, wrong_key, *KEYS.values()):
        assert secret not in log
