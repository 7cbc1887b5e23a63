"""E2B's code interpreter on port 49999 of a sandbox, for the `e2b-code-interpreter` SDK.

E2B bakes its interpreter into the `code-interpreter-v1` template and starts it at boot. agentbox
starts its own (interpreter_server.py, a file of this package written into the sandbox) the first
time a request for that port finds nothing listening: after a create, after a pause that did not
keep memory, after the workload killed it. So every sandbox of the E2B endpoint has it, and the
template name `code-interpreter-v1` is the `base` image.
"""

from __future__ import annotations

import time
from importlib import resources

from agentbox.api.proxy import Connect
from agentbox.errors import ProviderError
from agentbox.manager import WorkspaceManager
from agentbox.models import Workspace
from agentbox.providers.base import PortConnection
from agentbox.providers.processes import ProcessRequest

PORT = 49999
#: Where the server's file is written in the sandbox (on its disk, outside the user's home).
SERVER_PATH = "/tmp/.agentbox-code-interpreter.py"
TAG = "e2b-code-interpreter"
#: How long a server just started may take to listen (a Python start-up under gVisor: ~0.3 s).
STARTUP_SECONDS = 20.0


def connector(manager: WorkspaceManager, workspace: Workspace, home: str) -> Connect:
    """Connections to the sandbox's interpreter, started first if nothing listens on its port."""

    def connect() -> PortConnection:
        try:
            return manager.connect(workspace.owner, workspace.id, PORT)
        except ProviderError:
            pass
        _start(manager, workspace, home)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                return manager.connect(workspace.owner, workspace.id, PORT)
            except ProviderError:
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"the code interpreter did not start in sandbox {workspace.id} within {STARTUP_SECONDS:g} s: "
                        f"its output is that of the process tagged {TAG!r} (commands.list())"
                    ) from None
                time.sleep(0.05)

    return connect


def _start(manager: WorkspaceManager, workspace: Workspace, home: str) -> None:
    source = resources.files("agentbox.e2b_api").joinpath("interpreter_server.py").read_bytes()
    manager.write_file(workspace.owner, workspace.id, SERVER_PATH, [source], len(source))
    request = ProcessRequest(argv=["python3", SERVER_PATH], cwd=home, tag=TAG)
    manager.start_process(workspace.owner, workspace.id, request)
