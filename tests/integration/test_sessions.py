"""Shell sessions over real gVisor, runc and E2B workspaces: state that persists, timeouts that interrupt."""

from __future__ import annotations

import pytest

from agentbox.client import APIError, Client
from agentbox.wire.workspaces import WorkspaceOut


def test_a_session_keeps_directory_variables_and_functions(alice: Client, workspace: WorkspaceOut) -> None:
    session = alice.open_session(workspace.id, env={"GREETING": "hi"})
    first = alice.run_in_session(
        workspace.id, session, "mkdir -p /tmp/s && cd /tmp/s && export A=1 && B=2; greet() { echo $GREETING $1; }"
    )
    assert (first.exit_code, first.stdout, first.stderr, first.timed_out) == (0, "", "", False)
    second = alice.run_in_session(workspace.id, session, 'pwd; echo "$A $B"; greet you; printf no-newline')
    assert second.stdout == "/tmp/s\n1 2\nhi you\nno-newline"
    failing = alice.run_in_session(workspace.id, session, "echo oops >&2; false")
    assert (failing.exit_code, failing.stderr) == (1, "oops\n")
    broken = alice.run_in_session(workspace.id, session, "echo 'unclosed")
    assert broken.exit_code == 2 and "unexpected EOF" in broken.stderr  # a syntax error stays in its command
    assert alice.run_in_session(workspace.id, session, "cat; echo $A").stdout == "1\n"  # stdin is empty

    assert [s.session_id for s in alice.sessions(workspace.id)] == [session]
    other = alice.open_session(workspace.id, cwd="/tmp")
    assert alice.run_in_session(workspace.id, other, 'pwd; echo "[$A]"').stdout == "/tmp\n[]\n"  # its own shell
    alice.close_session(workspace.id, other)
    assert [s.session_id for s in alice.sessions(workspace.id)] == [session]


def test_a_command_past_its_timeout_is_interrupted_and_the_session_goes_on(
    alice: Client, workspace: WorkspaceOut
) -> None:
    session = alice.open_session(workspace.id)
    alice.run_in_session(workspace.id, session, "cd /tmp && export KEPT=yes")
    slow = alice.run_in_session(workspace.id, session, "echo started; sleep 60; echo finished", timeout=1)
    assert slow.timed_out and slow.exit_code == 130 and slow.stdout == "started\n"
    assert slow.duration_ms < 30_000
    stubborn = alice.run_in_session(workspace.id, session, "trap '' INT; sleep 60", timeout=1)
    assert stubborn.timed_out and not stubborn.session_ended  # SIGTERM after ^C did not work
    after = alice.run_in_session(workspace.id, session, "pwd; echo $KEPT; pgrep -x sleep || echo none")
    assert after.stdout == "/tmp\nyes\nnone\n"  # the interrupted commands are gone, the state stays


def test_exit_ends_a_session_and_errors_name_the_fix(alice: Client, workspace: WorkspaceOut) -> None:
    session = alice.open_session(workspace.id)
    ended = alice.run_in_session(workspace.id, session, "echo bye; exit 3")
    assert (ended.stdout, ended.exit_code, ended.session_ended) == ("bye\n", 3, True)
    with pytest.raises(APIError) as gone:
        alice.run_in_session(workspace.id, session, "true")
    assert gone.value.status_code == 409 and "open a new one" in gone.value.detail
    assert alice.sessions(workspace.id) == []
    for unknown in ("99999", "not-a-number"):
        with pytest.raises(APIError) as missing:
            alice.run_in_session(workspace.id, unknown, "true")
        assert missing.value.status_code == 404
