"""The audit trail over a real gVisor workspace: every call listed and logged, no file contents kept."""

from __future__ import annotations

import json

from agentbox.client import Client

from .conftest import Server


def test_the_trail_lists_an_agents_calls_and_the_log_has_them_as_json(server: Server, alice: Client) -> None:
    workspace = alice.create(provider="gvisor", ttl_days=1)
    try:
        alice.write_tool(workspace.id, "/workspace/app.py", "PASSWORD = 'swordfish'\n")
        alice.edit_tool(workspace.id, "/workspace/app.py", "swordfish", "marlin")
        alice.exec(workspace.id, ["python3", "/workspace/app.py"], env={"API_TOKEN": "sekrit"})
        session = alice.open_session(workspace.id)
        alice.run_in_session(workspace.id, session, "cd /tmp")
        alice.grep_tool(workspace.id, "PASSWORD")
        alice.write_file(workspace.id, "/workspace/data.bin", b"\0\1\2")
        process = alice.start_process(workspace.id, "sleep 60")
        alice.kill(workspace.id, process.pid)

        trail = alice.audit(workspace.id).records
        assert [record.action for record in reversed(trail)] == [
            "POST /tools/write",
            "POST /tools/edit",
            "POST /exec",
            "POST /sessions",
            "POST /sessions/{session_id}/run",
            "POST /tools/grep",
            "PUT /files",
            "POST /processes",
            "DELETE /processes/{pid}",
        ]
        assert all(record.owner == "alice" and record.status in (200, 201, 204) for record in trail)
        by_action = {record.action: record.arguments for record in trail}
        assert by_action["POST /sessions/{session_id}/run"] == {
            "session_id": session,
            "command": "cd /tmp",
            "timeout": None,
        }
        assert by_action["POST /exec"]["env"] == ["API_TOKEN"]
        kept = json.dumps([record.arguments for record in trail])
        assert "swordfish" not in kept and "marlin" not in kept and "sekrit" not in kept

        logged = [
            json.loads(line.split(" agentbox.workspaces.audit: ", 1)[1])
            for line in server.log().splitlines()
            if " agentbox.workspaces.audit: " in line and workspace.id in line
        ]
        assert [entry["action"] for entry in logged][-9:] == [record.action for record in reversed(trail)]

        # Any use of an ephemeral workspace moves its expiry to its TTL from now.
        used = alice.get(workspace.id)
        assert used.last_used_at is not None and used.expires_at is not None and workspace.expires_at is not None
        assert used.expires_at > workspace.expires_at
    finally:
        alice.delete(workspace.id)
