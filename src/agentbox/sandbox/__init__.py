"""`agentbox-exec`, the static helper copied into every workspace.

It is PID 1 of each container and the wrapper of every command and file operation
(own process group, timeouts, output caps, background processes that do not hold the
exec open). It is static so that it runs in any image, whatever libc the image has.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path

#: Where the helper lives inside a workspace.
HELPER_IN_WORKSPACE = "/.agentbox/agentbox-exec"
#: The directory (bind-mounted from the host) where the helper's init serves its control socket.
CONTROL_IN_WORKSPACE = "/.agentbox/run"
CONTROL_SOCKET = "control.sock"
#: Where the helper keeps background processes (on the workspace's own disk; processes.c).
PROCS_IN_WORKSPACE = "/.agentbox/procs"

_CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-static", "-s"]


class HelperMissing(RuntimeError):
    pass


def _here() -> Path:
    return Path(str(resources.files("agentbox.sandbox")))


def _sources() -> list[Path]:
    """The helper's C sources, compiled together (main.c lists what each is for).

    Every `.c` of this package, as the Makefile's prerequisites are, so that a file added to the
    helper is built without a list to keep in step."""
    return sorted(_here().glob("*.c"))


def _binary() -> Path:
    return _here() / "agentbox-exec"


def build(output: Path | None = None, *, strict: bool = False) -> Path:
    """Compile the helper (next to its sources by default); `strict` turns warnings into errors."""
    binary = output or _binary()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HelperMissing(
            f"{binary} is missing and no C compiler was found to build it: "
            "install gcc and libc6-dev (apt-get install -y gcc libc6-dev), or run `make helper`"
        )
    flags = [*_CFLAGS, "-Werror"] if strict else _CFLAGS
    result = subprocess.run(
        [compiler, *flags, "-o", str(binary), *map(str, _sources())],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HelperMissing(f"building {binary} failed:\n{result.stderr.strip()}")
    return binary


@cache
def helper_path() -> Path:
    """The compiled helper, built with the system C compiler when missing or older than a source or header."""
    binary = _binary()
    newest = max(path.stat().st_mtime for path in (*_sources(), *_here().glob("*.h")))
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    return build(binary)


@cache
def helper_bytes() -> bytes:
    return helper_path().read_bytes()


@cache
def helper_digest() -> str:
    return hashlib.sha256(helper_bytes()).hexdigest()[:12]
