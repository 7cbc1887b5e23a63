"""E2B's code interpreter on port 49999 of a sandbox, for the `e2b-code-interpreter` SDK.

E2B bakes its interpreter into the `code-interpreter-v1` template and starts it at boot. agentbox
starts its own (sandbox/interpreter_server.py, a file of agentbox written into the sandbox) the first
time a call with the sandbox's access token (`run_code`) finds nothing listening on that port:
after a create, after a pause that did not keep memory, after the workload killed it. So every
sandbox of the E2B endpoint has it, and the template name `code-interpreter-v1` is the `base` image.

Who may do what on that port (envd.py lets callers in): running code, and starting the
interpreter, take the sandbox's envd access token, as E2B's own interpreter wants it (the SDK's
`run_code` sends it as X-Access-Token). The SDK's context calls (create, list, restart, remove)
and `/health` send no access token, only the traffic token of a sandbox closed to public traffic:
those few routes reach an interpreter that already runs on the port's own terms (public, or the
traffic token), and never start one.
"""

from __future__ import annotations

import re
import time
from importlib import resources

from agentbox.db.models import Workspace
from agentbox.errors import ProviderError, Unauthorized
from agentbox.sandbox.process_table import ProcessRequest
from agentbox.sandbox.runtime import PortConnection
from agentbox.web.proxy import Connect, request_host
from agentbox.workspaces.manager import WorkspaceManager

PORT = 49999
#: The Host the interpreter is sent: it is agentbox's own server, not the sandbox's app, so a sandbox's
#: `request_host` (E2B's maskRequestHost) is not for it.
HOST = request_host(None, PORT)
#: Where the server's file is written in the sandbox (on its disk, outside the user's home).
SERVER_PATH = "/tmp/.agentbox-code-interpreter.py"
TAG = "e2b-code-interpreter"
#: How long a server just started may take to listen (a Python start-up under gVisor: ~0.3 s).
STARTUP_SECONDS = 20.0
#: The calls the SDK makes without the access token, as the interpreter's path (no query): an allow
#: list, since the interpreter reads `//execute/` as `/execute` too.
_WITHOUT_TOKEN = re.compile(
    r"GET /health|GET /contexts|POST /contexts|POST /contexts/[0-9A-Za-z_-]{1,64}/restart"
    r"|DELETE /contexts/[0-9A-Za-z_-]{1,64}"
)


def needs_token(method: str, target: str) -> bool:
    """Whether a call (its method, and its path and query as the interpreter gets them) takes the access
    token: everything but the SDK's context calls and `/health`, so running code always does."""
    return _WITHOUT_TOKEN.fullmatch(f"{method} {target}") is None


def running(manager: WorkspaceManager, workspace: Workspace) -> Connect:
    """Connections to the sandbox's interpreter if it runs; never started (for a caller without the token)."""

    def connect() -> tuple[PortConnection, str]:
        try:
            return manager.use(workspace.owner, workspace.id).connect(PORT), HOST
        except ProviderError:
            raise Unauthorized(
                f"the code interpreter of sandbox {workspace.id} is not running, and only a call with the "
                "sandbox's access token starts it: send its envdAccessToken as X-Access-Token (run_code does)"
            ) from None

    return connect


def connector(manager: WorkspaceManager, workspace: Workspace, home: str) -> Connect:
    """Connections to the sandbox's interpreter, started first if nothing listens on its port: for a
    caller who showed the sandbox's access token only."""

    def connect() -> tuple[PortConnection, str]:
        try:
            return manager.use(workspace.owner, workspace.id).connect(PORT), HOST
        except ProviderError:
            pass
        start(manager, workspace, home)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                return manager.use(workspace.owner, workspace.id).connect(PORT), HOST
            except ProviderError:
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"the code interpreter did not start in sandbox {workspace.id} within {STARTUP_SECONDS:g} s: "
                        f"its output is that of the process tagged {TAG!r} (commands.list())"
                    ) from None
                time.sleep(0.05)

    return connect


def ready(manager: WorkspaceManager, workspace: Workspace, home: str) -> None:
    """Start the interpreter in the sandbox unless it runs, and return once it listens."""
    connector(manager, workspace, home)()[0].close()


def start(manager: WorkspaceManager, workspace: Workspace, home: str) -> None:
    """Start the interpreter in the sandbox (it listens on PORT a moment later)."""
    source = resources.files("agentbox.sandbox").joinpath("interpreter_server.py").read_bytes()
    manager.use(workspace.owner, workspace.id).write_file(SERVER_PATH, [source], len(source))
    request = ProcessRequest(argv=["python3", SERVER_PATH], cwd=home, tag=TAG)
    manager.use(workspace.owner, workspace.id).start_process(request)
