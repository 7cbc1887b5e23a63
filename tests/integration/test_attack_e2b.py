"""Attacks on agentbox's E2B endpoint, each tried as a stranger would against a real gVisor sandbox.

A sandbox's id is no secret (host names, Referer, logs): with it alone, or with another owner's
access token, nothing may run in the sandbox, through the code interpreter's port (header and
host forms) or envd's /health. An upload over WORKSPACE_MAX_UPLOAD is refused while it arrives,
not once it has been taken in whole. The owner's unmodified SDKs keep working throughout.
"""

from __future__ import annotations

from collections.abc import Iterator

import e2b
import httpx
import pytest
from e2b_code_interpreter import Sandbox

from .conftest import KEYS, PREVIEW_DOMAIN, Server

INTERPRETER = 49999
#: What an attacker's code would leave behind, were it run.
MARKER = "/tmp/stranger-was-here"
#: The interpreter's own file in the sandbox: written only when it is started.
INTERPRETER_FILE = "/tmp/.agentbox-code-interpreter.py"


@pytest.fixture
def sandbox(sdk: str) -> Iterator[Sandbox]:
    # Public traffic, as E2B's default; the `base` template, whose interpreter is not started at create
    # (the code interpreter's own template starts it with the sandbox, as E2B does).
    made = Sandbox.create(template="base", timeout=300)
    yield made
    made.kill()


@pytest.fixture
def bobs_token(sdk: str) -> Iterator[str]:
    """Another owner's envd access token: the one of Bob's own sandbox, as his SDK holds it."""
    made = e2b.Sandbox.create(timeout=300, api_key=KEYS["bob"])
    token = made._envd_access_token
    assert token
    yield token
    made.kill()


def interpreter_listens(sandbox: Sandbox) -> bool:
    """Whether anything listens on the interpreter's port inside (the kernel's own table, via the owner's SDK)."""
    table = sandbox.commands.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null || true").stdout
    return any(
        fields[1].endswith(f":{INTERPRETER:04X}") and fields[3] == "0A"  # 0A: LISTEN
        for fields in (line.split() for line in table.splitlines()[1:])
        if len(fields) > 3
    )


def exists(sandbox: Sandbox, path: str) -> bool:
    return sandbox.commands.run(f"test -e {path} && echo yes || echo no").stdout.strip() == "yes"


def attempts(server: Server, sandbox_id: str, credentials: dict[str, str]) -> list[tuple[str, httpx.Response]]:
    """Every way a stranger reaches the interpreter: header form and host form, running code and making a context."""
    code = {"code": f"open({MARKER!r}, 'w').write('pwned')", "language": "python"}
    header_form = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(INTERPRETER)}
    host_form = {"Host": f"{INTERPRETER}-{sandbox_id}.{PREVIEW_DOMAIN}:{server.port}"}
    found = []
    for form, base, headers in (
        ("header", f"{server.url}/e2b/envd", header_form),
        ("host", server.url, host_form),
    ):
        with httpx.Client(headers={**headers, **credentials}, timeout=60) as client:
            for path in ("/execute", "//execute/"):  # the interpreter reads both as /execute
                found.append((f"{form} POST {path}", client.post(base + path, json=code)))
            found.append((f"{form} POST /contexts", client.post(base + "/contexts", json={})))
    return found


@pytest.mark.parametrize("who", ["nobody", "another owner"])
def test_the_code_interpreter_runs_nothing_for_a_stranger(
    who: str, sandbox: Sandbox, server: Server, request: pytest.FixtureRequest
) -> None:
    credentials = {} if who == "nobody" else {"X-Access-Token": request.getfixturevalue("bobs_token")}
    # Before the owner ever ran code: nothing listens, and nothing may be started.
    for attempt, answer in attempts(server, sandbox.sandbox_id, credentials):
        assert answer.status_code == 401, (attempt, answer.status_code, answer.text)
        assert "access token" in answer.json()["message"], (attempt, answer.text)
    assert not exists(sandbox, INTERPRETER_FILE), "the interpreter was written into the sandbox"
    assert not interpreter_listens(sandbox), "the interpreter was started"
    assert not exists(sandbox, MARKER)
    # The owner's SDK starts it and runs code; a stranger still runs none on the running interpreter.
    assert sandbox.run_code("6 * 7").text == "42"
    for attempt, answer in attempts(server, sandbox.sandbox_id, credentials):
        # The SDK's context calls carry the traffic token, not the access token: neither is the stranger's.
        assert answer.status_code == 401, (attempt, answer.status_code, answer.text)
    assert not exists(sandbox, MARKER)
    assert sandbox.run_code("'still mine'").text == "still mine"


def process_counter(sandbox: Sandbox) -> int:
    """The pid the sandbox gives its next process: every command run in it moves it on."""
    return int(sandbox.commands.run("echo $$").stdout)


def test_anonymous_envd_health_runs_nothing_in_the_sandbox(sandbox: Sandbox, server: Server, bobs_token: str) -> None:
    header_form = (f"{server.url}/e2b/envd/health", {"E2b-Sandbox-Id": sandbox.sandbox_id})
    host_form = (f"{server.url}/health", {"Host": f"49983-{sandbox.sandbox_id}.{PREVIEW_DOMAIN}:{server.port}"})
    first = process_counter(sandbox)
    before = process_counter(sandbox)
    own = before - first  # what asking for the counter costs
    asked = 0
    for url, headers in (header_form, host_form):
        for credentials in ({}, {"X-Access-Token": bobs_token}):
            for _ in range(10):
                answer = httpx.get(url, headers={**headers, **credentials}, timeout=30)
                assert answer.status_code == 204, answer.text  # running, as the store says
                asked += 1
    ran = process_counter(sandbox) - before - own
    assert ran < asked // 4, f"{asked} anonymous health checks started {ran} processes in the sandbox"
    # The owner's SDK still looks inside (it sends the token): a killed sandbox is said to be gone.
    assert sandbox.is_running() is True
    sandbox.kill()
    assert httpx.get(header_form[0], headers=header_form[1], timeout=30).status_code == 502
    assert sandbox.is_running() is False


LIMIT = 1 << 20


@pytest.fixture(scope="module")
def small_uploads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose uploads are capped at 1 MiB, so that going over costs little."""
    server = Server(tmp_path_factory.mktemp("small-uploads"), env={"WORKSPACE_MAX_UPLOAD": str(LIMIT)}).start()
    yield server
    server.stop()


@pytest.fixture
def small_sandbox(small_uploads: Server) -> Iterator[e2b.Sandbox]:
    server = small_uploads
    made = e2b.Sandbox.create(
        timeout=300, api_key=KEYS["alice"], api_url=f"{server.url}/e2b", sandbox_url=f"{server.url}/e2b/envd"
    )
    yield made
    made.kill()


def upload(server: Server, sandbox: e2b.Sandbox, head: bytes, total: int) -> tuple[httpx.Response, int]:
    """A multipart upload of `head` then `total` bytes of x, chunked (no Content-Length to refuse it by), as its
    owner sends it; the answer, and how much of the body had been sent when it came."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield head
        while sent < total:
            sent += 1 << 20
            yield b"x" * (1 << 20)
        yield b"\r\n\r\nend\r\n--b--\r\n"

    headers = {
        "E2b-Sandbox-Id": sandbox.sandbox_id,
        "X-Access-Token": sandbox._envd_access_token or "",
        "Content-Type": "multipart/form-data; boundary=b",
    }
    url = f"{server.url}/e2b/envd/files"
    answer = httpx.post(url, params={"path": "big.bin"}, content=body(), headers=headers, timeout=60)
    return answer, sent


def test_an_oversize_multipart_upload_is_refused_before_it_is_taken_in(
    small_uploads: Server, small_sandbox: e2b.Sandbox
) -> None:
    total = 256 << 20
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    answer, sent = upload(small_uploads, small_sandbox, head, total)
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == 413 and "WORKSPACE_MAX_UPLOAD" in answer.json()["message"]
    # Answered once the limit was passed, with most of the body never sent (loopback buffers hold a few MiB).
    assert sent < total // 8, f"{sent} of {total} bytes were taken before the answer"
    assert not small_sandbox.files.exists("big.bin")
    # Under the limit, a multipart upload is as before; over it, the files of one request together are refused.
    small_sandbox.files.write_files([{"path": "a.txt", "data": "one"}, {"path": "b.txt", "data": "y" * (LIMIT // 2)}])
    assert small_sandbox.files.read("a.txt") == "one"
    over = [{"path": "c.txt", "data": "z" * (LIMIT // 2)}, {"path": "d.txt", "data": "z" * (LIMIT // 2 + 1)}]
    with pytest.raises(e2b.SandboxException, match="WORKSPACE_MAX_UPLOAD"):
        small_sandbox.files.write_files(over)


def test_a_multipart_header_that_never_ends_is_refused_early(small_uploads: Server, small_sandbox: e2b.Sandbox) -> None:
    total = 16 << 20
    answer, sent = upload(small_uploads, small_sandbox, b"--b\r\nContent-Disposition: form-data; name=", total)
    assert answer.status_code == 400, answer.text  # E2B's shape, with what to fix; not a 500
    assert answer.json()["code"] == 400 and "multipart form could not be read" in answer.json()["message"]
    assert sent < total // 2, f"{sent} of {total} bytes were taken before the answer"
