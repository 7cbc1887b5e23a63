"""What every provider promises the manager, checked the same way for each one.

The lifecycle (create, stop, start, destroy, state, inventory) through the provider; what happens
inside a workspace (commands, files, archives) through the runtime it hands out, `runtime(ref)`.
tests/unit/test_provider_contract.py runs it on the in-memory fake; the integration suite runs
it on the Docker providers (gVisor and runc) and on E2B through its stand-in. A provider that
passes can be put under the manager without the manager knowing which one it is.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import time

import pytest

from agentbox.errors import BadRequest, FileError, WorkspaceGone
from agentbox.providers.base import Provider, WorkspaceSpec
from agentbox.sandbox.runtime import ExecRequest, FileStat


def spec(image: str) -> WorkspaceSpec:
    return WorkspaceSpec(
        id="ws-" + secrets.token_hex(8), image=image, cpu=1, memory=256 << 20, disk=256 << 20, pids_limit=256
    )


def check_lifecycle_and_inventory(provider: Provider, workspace: WorkspaceSpec) -> None:
    """create -> running and listed by id; stop/start; destroy twice; then missing and unlisted."""
    ref = provider.create(workspace)
    try:
        assert provider.state(ref) == "running"
        assert provider.inventory()[workspace.id] == (ref, "running")
        result = provider.runtime(ref).exec(ExecRequest(["/bin/sh", "-c", "echo ready; exit 3"]))
        assert (result.exit_code, result.stdout, result.timed_out) == (3, "ready\n", False)
        if provider.capabilities().stop_start:
            provider.stop(ref)
            assert provider.state(ref) == "stopped"
            assert provider.inventory()[workspace.id] == (ref, "stopped")
            provider.start(ref)
            assert provider.runtime(ref).exec(ExecRequest(["true"])).exit_code == 0  # a runtime made afresh
    finally:
        provider.destroy(ref)
    provider.destroy(ref)  # again: already gone is not an error
    assert provider.state(ref) == "missing"
    assert workspace.id not in provider.inventory()


def check_a_missing_workspace_fails_eagerly(provider: Provider, workspace: WorkspaceSpec) -> None:
    """A command for a workspace that is gone fails when asked, before any output is promised; the
    runtime itself is made without reaching the sandbox (the core makes one for every request)."""
    ref = provider.create(workspace)
    runtime = provider.runtime(ref)
    provider.destroy(ref)
    gone = provider.runtime(ref)  # no error yet: only its calls reach the sandbox
    for inside in (runtime, gone):
        with pytest.raises(WorkspaceGone):
            inside.exec_stream(ExecRequest(["true"]))  # not iterated: the call itself must fail
        with pytest.raises(WorkspaceGone):
            inside.stat("/workspace")


def check_files_and_errors(provider: Provider, workspace: WorkspaceSpec) -> None:
    """Files round-trip; a missing path is FileError ENOENT (404); archives go in and out."""
    ref = provider.create(workspace)
    try:
        runtime = provider.runtime(ref)
        assert runtime.write_file("/workspace/a.txt", [b"hello ", b"world"], 11) == 11
        assert runtime.stat("/workspace/a.txt") == FileStat(size=11, mode=0o644)
        found, body = runtime.read_file("/workspace/a.txt")
        assert (found.size, b"".join(body)) == (11, b"hello world")
        assert "a.txt" in {entry.name for entry in runtime.stat("/workspace")}  # type: ignore[union-attr]
        read = runtime.read("/workspace/a.txt")
        assert not isinstance(read, list) and b"".join(read[1]) == b"hello world"
        with pytest.raises(FileError) as missing:
            runtime.stat("/workspace/nope")
        assert (missing.value.errno_name, missing.value.status_code) == ("ENOENT", 404)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo("packed.txt")
            info.size = 6
            tar.addfile(info, io.BytesIO(b"packed"))
        if provider.capabilities().archives:
            runtime.write_archive("/workspace/in", [archive.getvalue()])
            assert b"".join(runtime.read_file("/workspace/in/packed.txt")[1]) == b"packed"
            with tarfile.open(fileobj=io.BytesIO(b"".join(runtime.read_archive("/workspace/in")))) as tar:
                assert "packed.txt" in {name.removeprefix("./") for name in tar.getnames()}
    finally:
        provider.destroy(ref)


def check_suspend_and_wake(provider: Provider, workspace: WorkspaceSpec) -> None:
    """A suspended workspace uses no CPU and keeps what it had; woken (twice is no error), it answers as before;
    stop and destroy take a suspended one. A provider that cannot suspend says so (400)."""
    ref = provider.create(workspace)
    try:
        if not provider.capabilities().suspend:
            with pytest.raises(BadRequest):
                provider.suspend(ref)
            return
        runtime = provider.runtime(ref)
        runtime.write_file("/workspace/kept.txt", [b"kept"], 4)
        provider.suspend(ref)
        before = provider.usage(ref)
        time.sleep(1)  # an idle systrap sandbox spins ~30 ms of CPU a second awake
        after = provider.usage(ref)
        if before is not None and after is not None and before.cpu_seconds is not None:
            assert after.cpu_seconds - before.cpu_seconds < 0.002, "a suspended workspace used CPU"
        assert provider.state(ref) == "running"  # suspended is not stopped: its memory is where it was
        provider.wake(ref)
        provider.wake(ref)
        assert b"".join(runtime.read_file("/workspace/kept.txt")[1]) == b"kept"
        assert runtime.exec(ExecRequest(["true"])).exit_code == 0
        if provider.capabilities().stop_start:
            provider.suspend(ref)
            provider.stop(ref)
            assert provider.state(ref) == "stopped"
            provider.start(ref)
            assert provider.runtime(ref).exec(ExecRequest(["true"])).exit_code == 0
        provider.suspend(ref)  # and destroyed as it is, below
    finally:
        provider.destroy(ref)
    assert provider.state(ref) == "missing"


CHECKS = [
    check_lifecycle_and_inventory,
    check_a_missing_workspace_fails_eagerly,
    check_files_and_errors,
    check_suspend_and_wake,
]
