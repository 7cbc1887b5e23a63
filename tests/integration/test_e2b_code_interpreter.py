"""E2B's `e2b-code-interpreter` SDK, unmodified, against agentbox's E2B endpoint over real gVisor sandboxes:
stateful Python, streamed output, results, errors, contexts, timeouts, and the interpreter back after a
pause that rebooted the sandbox."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import Sandbox

from .conftest import Server


@pytest.fixture
def sandbox(sdk: str) -> Iterator[Sandbox]:
    made = Sandbox.create(timeout=300)  # the SDK's own template, code-interpreter-v1
    yield made
    made.kill()


def test_code_runs_with_state_output_results_and_errors(sandbox: Sandbox) -> None:
    first = sandbox.run_code("import sys\nx = 41\nprint('hello')\nprint('oops', file=sys.stderr)\nx + 1")
    assert first.logs.stdout == ["hello\n"] and first.logs.stderr == ["oops\n"]
    assert first.text == "42" and first.error is None
    assert sandbox.run_code("x * 2").text == "82"  # the namespace lives on
    failed = sandbox.run_code("def f():\n    return 1 / 0\nf()")
    assert failed.error is not None and failed.error.name == "ZeroDivisionError"
    assert 'File "<cell>", line 2, in f' in failed.error.traceback
    streamed: list[str] = []
    sandbox.run_code("for i in range(3):\n    print(i, flush=True)", on_stdout=lambda m: streamed.append(m.line))
    assert "".join(streamed) == "0\n1\n2\n"
    rich = sandbox.run_code("class Page:\n    def _repr_html_(self):\n        return '<b>hi</b>'\nPage()")
    assert rich.results[0].html == "<b>hi</b>" and rich.results[0].is_main_result
    env = sandbox.run_code("import os\nos.environ.get('ONLY_NOW')", envs={"ONLY_NOW": "yes"})
    assert env.text == "yes"  # a string as it is, as E2B gives it
    assert sandbox.run_code("os.environ.get('ONLY_NOW')").text is None  # for that execution only
    assert sandbox.run_code("input()").error.name == "EOFError"  # the code's stdin is empty


def test_a_context_can_be_made_before_any_code_runs(sandbox: Sandbox) -> None:
    # The SDK's context calls carry no access token: the interpreter must already run, as on E2B.
    context = sandbox.create_code_context(cwd="/tmp")
    assert sandbox.run_code("import os\nos.getcwd()", context=context).text == "/tmp"


def test_contexts_are_separate_namespaces(sandbox: Sandbox) -> None:
    sandbox.run_code("shared = 1")
    context = sandbox.create_code_context(cwd="/tmp")
    assert sandbox.run_code("import os\nos.getcwd()", context=context).text == "/tmp"
    assert sandbox.run_code("shared", context=context).error.name == "NameError"
    assert context.id in [c.id for c in sandbox.list_code_contexts()]
    sandbox.run_code("here = 1", context=context)
    sandbox.restart_code_context(context)
    assert sandbox.run_code("here", context=context).error.name == "NameError"
    sandbox.remove_code_context(context)
    assert context.id not in [c.id for c in sandbox.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sandbox.run_code("1", context=context)
    with pytest.raises(SandboxException, match="runs python"):
        sandbox.run_code("1", language="r")  # a 400 naming what is offered


def test_a_timeout_interrupts_the_code_and_frees_the_context(sandbox: Sandbox) -> None:
    sandbox.run_code("kept = 'still here'")
    with pytest.raises(TimeoutException):
        sandbox.run_code("import time\ntime.sleep(60)", timeout=2)
    assert sandbox.run_code("kept").text == "still here"
    died = sandbox.run_code("import os\nos._exit(3)")
    assert died.error is not None and "exit status 3" in died.error.value
    assert sandbox.run_code("1 + 1").text == "2"  # a fresh namespace, at once


def test_a_sandbox_killed_during_an_execution_is_said_to_be(sandbox: Sandbox) -> None:
    killer = threading.Timer(2.0, sandbox.kill)
    killer.start()
    try:
        with pytest.raises(TimeoutException, match="sandbox was killed"):  # not an answer that looks whole
            sandbox.run_code("import time\ntime.sleep(120)", timeout=120)
    finally:
        killer.cancel()


def test_the_interpreter_comes_back_after_a_pause_that_rebooted(sandbox: Sandbox) -> None:
    sandbox.run_code("x = 1")
    sandbox.pause()  # a sandbox with internet access: files kept, processes not
    sandbox.connect(timeout=300)
    assert sandbox.run_code("'back'").text == "back"


def test_the_interpreter_port_is_closed_to_others(sandbox: Sandbox, server: Server) -> None:
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999"}
    bob = httpx.Client(base_url=f"{server.url}/e2b/envd", headers={**headers, "X-Access-Token": "forged"})
    # Its ports are public as on E2B (allow_public_traffic defaults to true), but its interpreter is no
    # public app: a context is a process in the sandbox. It takes the access token or the traffic token.
    assert bob.get("/health").status_code == 401
    assert bob.post("/contexts", json={}).status_code == 401
    assert bob.post("/execute", json={"code": "1"}).status_code == 401
    traffic = {"E2B-Traffic-Access-Token": sandbox.traffic_access_token or ""}
    assert httpx.get(f"{server.url}/e2b/envd/health", headers={**headers, **traffic}).status_code == 200
    assert sandbox.run_code("1").text == "1"
    closed = Sandbox.create(timeout=60, network={"allow_public_traffic": False})
    try:
        shut = {"E2b-Sandbox-Id": closed.sandbox_id, "E2b-Sandbox-Port": "49999"}
        assert httpx.get(f"{server.url}/e2b/envd/health", headers=shut).status_code == 401
        assert closed.run_code("6 * 7").text == "42"  # the SDK sends the traffic token
    finally:
        closed.kill()
