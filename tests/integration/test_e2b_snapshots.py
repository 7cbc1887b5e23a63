"""E2B's snapshots and forks on agentbox's E2B endpoint, through the unmodified `e2b` SDK over real gVisor
sandboxes: `create_snapshot` (named or not, files only on request), `list_snapshots` (all, by sandbox, by name,
paged), `delete_snapshot`, `Sandbox.create(snapshot_id)` and `fork(count)`; a snapshot is the owner's agentbox
snapshot; a fork of a sandbox without internet goes on with its running processes; another owner's key finds
nothing; bad input is refused with what to fix; nothing is left behind. Then the cases of E2B's own SDK tests
(tests/{sync,async}/sandbox_*/test_snapshot_api.py and test_fork.py) as they run against E2B's cloud."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    InvalidArgumentException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
)

from agentbox.client import Client

from .conftest import KEYS, Server, eventually

T = TypeVar("T")


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    async def whole() -> T:
        return await coroutine()

    return asyncio.run(whole())


@pytest.fixture
def sandbox(sdk: str) -> Iterator[Sandbox]:
    made = Sandbox.create(timeout=300, metadata={"sandbox_test_id": new_test_id()})
    yield made
    made.kill()


@pytest.fixture
def no_snapshots_left(sdk: str, alice: Client) -> Iterator[None]:
    """Every snapshot a test made is deleted by it (the session's server is shared, and counts them)."""
    before = {s.id for s in alice.snapshots(limit=1000).snapshots}
    yield
    assert {s.id for s in alice.snapshots(limit=1000).snapshots} == before


def new_test_id() -> str:
    return f"test_{secrets.token_hex(4)}"


def count_in(sandbox: Sandbox) -> int:
    """The counter a test's background loop writes (renamed into place, so never read half-written); 0 before
    its first write."""
    written = sandbox.commands.run("cat /home/user/count 2>/dev/null || true").stdout.strip()
    return int(written) if written.isdigit() else 0


def raw(sdk: str, method: str, path: str, key: str = "alice", **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=f"{sdk}/e2b", timeout=120) as client:
        return client.request(method, path, headers={"X-API-Key": KEYS[key]}, **kwargs)


def test_a_snapshot_is_the_owners_agentbox_snapshot_and_makes_sandboxes(
    sdk: str, sandbox: Sandbox, alice: Client, no_snapshots_left: None
) -> None:
    sandbox.files.write("/home/user/notes.txt", "before")
    name = f"e2b-{secrets.token_hex(4)}"
    snapshot = sandbox.create_snapshot(name=name)
    try:
        assert snapshot.snapshot_id.startswith("snap-") and snapshot.names == [name]
        # agentbox's own API shows the same snapshot: its name, its source, files only (the sandbox has internet).
        mine = alice.get_snapshot(snapshot.snapshot_id)
        assert (mine.name, mine.workspace_id, mine.memory_kept) == (name, sandbox.sandbox_id, False)
        sandbox.files.write("/home/user/notes.txt", "after")  # the source goes on; the snapshot holds "before"

        # By id and by name, a sandbox of its files, in E2B's base template (its user, its home).
        for template in (snapshot.snapshot_id, name):
            made = Sandbox.create(template, timeout=120)
            try:
                assert made.files.read("/home/user/notes.txt") == "before"
                assert made.commands.run("whoami").stdout.strip() == "user"
                assert made.get_info().template_id == "base"
            finally:
                made.kill()
        assert sandbox.files.read("/home/user/notes.txt") == "after"

        # Listed: all, by sandbox, by name (E2B's team/name:tag form read too); another sandbox's list is empty.
        listed = [s.snapshot_id for s in Sandbox.list_snapshots().next_items()]
        assert snapshot.snapshot_id in listed
        assert [s.snapshot_id for s in sandbox.list_snapshots().next_items()] == [snapshot.snapshot_id]
        assert [s.names for s in Sandbox.list_snapshots(name=f"team/{name}:default").next_items()] == [[name]]
        assert Sandbox.list_snapshots(sandbox_id="no-such-sandbox").next_items() == []
    finally:
        assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is False
    # A deleted snapshot names no template: the create is refused (and makes nothing).
    with pytest.raises(SandboxException, match="no snapshot of yours with this id"):
        Sandbox.create(snapshot.snapshot_id, timeout=60)


def test_listing_pages_with_e2bs_next_token(sdk: str, sandbox: Sandbox, no_snapshots_left: None) -> None:
    taken = [sandbox.create_snapshot().snapshot_id for _ in range(3)]
    try:
        paginator = sandbox.list_snapshots(limit=2)
        pages = [paginator.next_items()]
        assert paginator.has_next
        pages.append(paginator.next_items())
        assert [[s.snapshot_id for s in page] for page in pages] == [taken[::-1][:2], taken[::-1][2:]]
        assert not paginator.has_next
        stale = raw(sdk, "GET", "/snapshots", params={"nextToken": "snap-0000000000000000"})
        assert stale.status_code == 400 and "nextToken" in stale.json()["message"]
    finally:
        for snapshot_id in taken:
            Sandbox.delete_snapshot(snapshot_id)


def test_a_fork_without_internet_goes_on_with_its_processes(sdk: str, alice: Client, no_snapshots_left: None) -> None:
    source = Sandbox.create(timeout=300, allow_internet_access=False)
    try:
        source.files.write("/home/user/state.txt", "shared")
        source.commands.run(
            "sh -c 'n=0; while :; do n=$((n+1)); echo $n > /home/user/.count; mv /home/user/.count /home/user/count; "
            "sleep 0.2; done'",
            background=True,
        )
        eventually(lambda: count_in(source) > 1, timeout=30)
        forks = source.fork(count=2, timeout=120)
        made = [f for f in forks if isinstance(f, Sandbox)]
        try:
            assert len(made) == 2 and len({f.sandbox_id for f in made} | {source.sandbox_id}) == 3
            for fork in made:
                # The counter runs on in the fork, from where it was (never from 1 again).
                first = count_in(fork)
                assert first > 1
                eventually(lambda fork=fork, first=first: count_in(fork) > first, timeout=30)
                fork.files.write("/home/user/state.txt", f"mine: {fork.sandbox_id}")
            assert [f.files.read("/home/user/state.txt") for f in made] == [f"mine: {f.sandbox_id}" for f in made]
            assert source.files.read("/home/user/state.txt") == "shared"
            assert source.is_running()
            # The fork's snapshot is gone with the fork made; E2B's default fork lifetime is 15 s unless given.
            assert Sandbox.list_snapshots(sandbox_id=source.sandbox_id).next_items() == []
            assert all((f.get_info().end_at - f.get_info().started_at).total_seconds() <= 121 for f in made)
        finally:
            for fork in made:
                fork.kill()

        # Its snapshots keep memory, unless asked for the files only (E2B's mode="filesystem"); a sandbox made
        # from the full one goes on counting, one from the other starts with the count's file and no counter.
        full, files = source.create_snapshot(), source.create_snapshot(mode="filesystem")
        try:
            assert [alice.get_snapshot(s.snapshot_id).memory_kept for s in (full, files)] == [True, False]
            running, cold = Sandbox.create(full.snapshot_id, timeout=60), Sandbox.create(files.snapshot_id, timeout=60)
            try:
                first = count_in(running)
                eventually(lambda: count_in(running) > first, timeout=30)
                stopped_at = count_in(cold)
                assert stopped_at > 1
                assert "while" not in cold.commands.run("ps -eo args").stdout
                assert count_in(cold) == stopped_at
            finally:
                running.kill()
                cold.kill()
        finally:
            Sandbox.delete_snapshot(full.snapshot_id)
            Sandbox.delete_snapshot(files.snapshot_id)
    finally:
        source.kill()


def test_each_fork_is_made_or_refused_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server that runs two sandboxes at most: a fork of three gets one sandbox and two of E2B's 429s,
    in the places of the forks refused; the source runs on, and the fork's snapshot is gone."""
    capped = Server(tmp_path, env={"WORKSPACE_MAX_CONCURRENT": "2"}).start()
    try:
        monkeypatch.setenv("E2B_API_URL", f"{capped.url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"{capped.url}/e2b/envd")
        monkeypatch.setenv("E2B_API_KEY", KEYS["alice"])
        monkeypatch.setenv("E2B_CONNECTION_RETRIES", "0")
        source = Sandbox.create(timeout=300)
        try:
            source.files.write("/home/user/state.txt", "forked")
            forks = source.fork(count=3, timeout=60)
            made = [f for f in forks if isinstance(f, Sandbox)]
            try:
                assert len(forks) == 3 and len(made) == 1
                assert all(isinstance(f, RateLimitException) for f in forks if not isinstance(f, Sandbox))
                assert made[0].files.read("/home/user/state.txt") == "forked"
                assert source.is_running()
                assert Sandbox.list_snapshots().next_items() == []
            finally:
                for fork in made:
                    fork.kill()
        finally:
            source.kill()
        with capped.client() as alice:
            assert alice.list() == []
    finally:
        capped.stop()


def test_another_owners_sandboxes_and_snapshots_are_e2bs_404(
    sdk: str, sandbox: Sandbox, no_snapshots_left: None
) -> None:
    snapshot = sandbox.create_snapshot()
    try:
        with pytest.raises(SandboxNotFoundException):
            Sandbox.create_snapshot(sandbox.sandbox_id, api_key=KEYS["bob"])
        with pytest.raises(SandboxNotFoundException):
            Sandbox.fork(sandbox.sandbox_id, api_key=KEYS["bob"])
        assert Sandbox.list_snapshots(api_key=KEYS["bob"]).next_items() == []
        assert Sandbox.list_snapshots(name=snapshot.snapshot_id, api_key=KEYS["bob"]).next_items() == []
        assert Sandbox.delete_snapshot(snapshot.snapshot_id, api_key=KEYS["bob"]) is False
        with pytest.raises(SandboxException, match="no snapshot of yours with this id"):
            Sandbox.create(snapshot.snapshot_id, timeout=60, api_key=KEYS["bob"])
        # Still alice's, whole.
        assert [s.snapshot_id for s in Sandbox.list_snapshots(name=snapshot.snapshot_id).next_items()] == [
            snapshot.snapshot_id
        ]
    finally:
        Sandbox.delete_snapshot(snapshot.snapshot_id)


def test_bad_input_is_refused_with_what_to_fix(sdk: str, sandbox: Sandbox, no_snapshots_left: None) -> None:
    with pytest.raises(SandboxException, match="name: 1 to 64 letters"):
        sandbox.create_snapshot(name="no spaces/or slashes")
    with pytest.raises(SandboxException, match="form of a snapshot id"):
        sandbox.create_snapshot(name="snap-0123456789abcdef")
    name = f"taken-{secrets.token_hex(4)}"
    first = sandbox.create_snapshot(name=name)
    try:
        with pytest.raises(SandboxException, match="already"):
            sandbox.create_snapshot(name=name)
    finally:
        Sandbox.delete_snapshot(first.snapshot_id)
    for count in (0, 101):
        refused = raw(sdk, "POST", f"/sandboxes/{sandbox.sandbox_id}/fork", json={"count": count})
        assert refused.status_code == 400 and "count" in refused.json()["message"]
    with pytest.raises(InvalidArgumentException):
        sandbox.fork(count=0)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.fork("no-such-sandbox")
    assert raw(sdk, "DELETE", "/templates/base").status_code == 404


# The cases of E2B's SDK tests (packages/python-sdk/tests/{sync,async}/sandbox_*/test_snapshot_api.py and
# test_fork.py), their logic run here against the live endpoint: each makes its sandbox as their `sandbox`
# fixture does (the `base` template, tagged with the test's id) and checks what they check.


def _sync_snapshot_api(case: str, sandbox: Sandbox, sandbox_test_id: str) -> None:
    if case == "test_create_snapshot":
        snapshot = sandbox.create_snapshot()
        assert snapshot.snapshot_id and len(snapshot.snapshot_id) > 0
        Sandbox.delete_snapshot(snapshot.snapshot_id)
    elif case in ("test_create_sandbox_from_snapshot", "test_snapshot_preserves_filesystem"):
        sandbox.files.make_dir("/home/user/app")
        sandbox.files.write("/home/user/app/config.json", '{"env": "test"}')
        sandbox.files.write("/home/user/test.txt", "content from original sandbox")
        snapshot = sandbox.create_snapshot()
        try:
            new_sandbox = Sandbox.create(snapshot.snapshot_id)
            try:
                assert new_sandbox.files.exists("/home/user/app")
                assert new_sandbox.files.read("/home/user/app/config.json") == '{"env": "test"}'
                assert new_sandbox.files.read("/home/user/test.txt") == "content from original sandbox"
            finally:
                new_sandbox.kill()
        finally:
            Sandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_create_multiple_sandboxes_from_snapshot":
        sandbox.files.write("/home/user/shared.txt", "shared snapshot content")
        snapshot = sandbox.create_snapshot()
        try:
            sandbox1 = Sandbox.create(snapshot.snapshot_id)
            sandbox2 = Sandbox.create(snapshot.snapshot_id)
            try:
                assert sandbox1.files.read("/home/user/shared.txt") == "shared snapshot content"
                assert sandbox2.files.read("/home/user/shared.txt") == "shared snapshot content"
                sandbox1.files.write("/home/user/shared.txt", "modified in sandbox1")
                assert sandbox1.files.read("/home/user/shared.txt") == "modified in sandbox1"
                assert sandbox2.files.read("/home/user/shared.txt") == "shared snapshot content"
            finally:
                sandbox1.kill()
                sandbox2.kill()
        finally:
            Sandbox.delete_snapshot(snapshot.snapshot_id)
    elif case in ("test_list_snapshots", "test_list_snapshots_for_sandbox"):
        snapshot = sandbox.create_snapshot()
        try:
            if case == "test_list_snapshots":
                paginator = Sandbox.list_snapshots()
                assert paginator.has_next
            else:
                paginator = Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id)
            snapshots = paginator.next_items()
            assert isinstance(snapshots, list)
            assert any(s.snapshot_id == snapshot.snapshot_id for s in snapshots)
        finally:
            Sandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_list_snapshots_filtered_by_name":
        name = f"snap-filter-{sandbox_test_id}"
        snapshot = sandbox.create_snapshot(name=name)
        try:
            assert any(s.snapshot_id == snapshot.snapshot_id for s in Sandbox.list_snapshots(name=name).next_items())
            assert Sandbox.list_snapshots(name=f"{name}-does-not-exist").next_items() == []
        finally:
            Sandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_create_named_snapshot":
        name = f"snap-{sandbox_test_id}"
        snapshot = sandbox.create_snapshot(name=name)
        try:
            assert snapshot.snapshot_id and isinstance(snapshot.names, list) and len(snapshot.names) > 0
            assert any(name in n for n in snapshot.names)
        finally:
            Sandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_delete_snapshot":
        snapshot = sandbox.create_snapshot()
        assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
        assert Sandbox.delete_snapshot(snapshot.snapshot_id) is False
    elif case == "test_create_snapshot_class_method":
        snapshot = Sandbox.create_snapshot(sandbox.sandbox_id)
        assert snapshot.snapshot_id and len(snapshot.snapshot_id) > 0
        Sandbox.delete_snapshot(snapshot.snapshot_id)
    else:
        raise AssertionError(case)


async def _async_snapshot_api(case: str, sandbox: AsyncSandbox, sandbox_test_id: str) -> None:
    if case == "test_create_snapshot":
        snapshot = await sandbox.create_snapshot()
        assert snapshot.snapshot_id and len(snapshot.snapshot_id) > 0
        await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    elif case in ("test_create_sandbox_from_snapshot", "test_snapshot_preserves_filesystem"):
        await sandbox.files.make_dir("/home/user/app")
        await sandbox.files.write("/home/user/app/config.json", '{"env": "test"}')
        await sandbox.files.write("/home/user/test.txt", "content from original sandbox")
        snapshot = await sandbox.create_snapshot()
        try:
            new_sandbox = await AsyncSandbox.create(snapshot.snapshot_id)
            try:
                assert await new_sandbox.files.exists("/home/user/app")
                assert await new_sandbox.files.read("/home/user/app/config.json") == '{"env": "test"}'
                assert await new_sandbox.files.read("/home/user/test.txt") == "content from original sandbox"
            finally:
                await new_sandbox.kill()
        finally:
            await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_create_multiple_sandboxes_from_snapshot":
        await sandbox.files.write("/home/user/shared.txt", "shared snapshot content")
        snapshot = await sandbox.create_snapshot()
        try:
            sandbox1 = await AsyncSandbox.create(snapshot.snapshot_id)
            sandbox2 = await AsyncSandbox.create(snapshot.snapshot_id)
            try:
                assert await sandbox1.files.read("/home/user/shared.txt") == "shared snapshot content"
                assert await sandbox2.files.read("/home/user/shared.txt") == "shared snapshot content"
                await sandbox1.files.write("/home/user/shared.txt", "modified in sandbox1")
                assert await sandbox1.files.read("/home/user/shared.txt") == "modified in sandbox1"
                assert await sandbox2.files.read("/home/user/shared.txt") == "shared snapshot content"
            finally:
                await sandbox1.kill()
                await sandbox2.kill()
        finally:
            await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    elif case in ("test_list_snapshots", "test_list_snapshots_for_sandbox"):
        snapshot = await sandbox.create_snapshot()
        try:
            if case == "test_list_snapshots":
                paginator = AsyncSandbox.list_snapshots()
                assert paginator.has_next
            else:
                paginator = AsyncSandbox.list_snapshots(sandbox_id=sandbox.sandbox_id)
            snapshots = await paginator.next_items()
            assert isinstance(snapshots, list)
            assert any(s.snapshot_id == snapshot.snapshot_id for s in snapshots)
        finally:
            await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_list_snapshots_filtered_by_name":
        name = f"snap-filter-{sandbox_test_id}"
        snapshot = await sandbox.create_snapshot(name=name)
        try:
            found = await AsyncSandbox.list_snapshots(name=name).next_items()
            assert any(s.snapshot_id == snapshot.snapshot_id for s in found)
            assert await AsyncSandbox.list_snapshots(name=f"{name}-does-not-exist").next_items() == []
        finally:
            await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_create_named_snapshot":
        name = f"snap-{sandbox_test_id}"
        snapshot = await sandbox.create_snapshot(name=name)
        try:
            assert snapshot.snapshot_id and isinstance(snapshot.names, list) and len(snapshot.names) > 0
            assert any(name in n for n in snapshot.names)
        finally:
            await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    elif case == "test_delete_snapshot":
        snapshot = await sandbox.create_snapshot()
        assert await AsyncSandbox.delete_snapshot(snapshot.snapshot_id) is True
        assert await AsyncSandbox.delete_snapshot(snapshot.snapshot_id) is False
    elif case == "test_create_snapshot_class_method":
        snapshot = await AsyncSandbox.create_snapshot(sandbox.sandbox_id)
        assert snapshot.snapshot_id and len(snapshot.snapshot_id) > 0
        await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)
    else:
        raise AssertionError(case)


SNAPSHOT_API_CASES = [
    "test_create_snapshot",
    "test_create_sandbox_from_snapshot",
    "test_create_multiple_sandboxes_from_snapshot",
    "test_list_snapshots",
    "test_list_snapshots_for_sandbox",
    "test_list_snapshots_filtered_by_name",
    "test_create_named_snapshot",
    "test_delete_snapshot",
    "test_snapshot_preserves_filesystem",
    "test_create_snapshot_class_method",
]


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("case", SNAPSHOT_API_CASES)
def test_e2b_sdk_snapshot_api_cases(sdk: str, flavour: str, case: str, no_snapshots_left: None) -> None:
    sandbox_test_id = new_test_id()
    metadata = {"sandbox_test_id": sandbox_test_id}
    if flavour == "sync":
        sandbox = Sandbox.create("base", metadata=metadata)
        try:
            _sync_snapshot_api(case, sandbox, sandbox_test_id)
        finally:
            sandbox.kill()
        return

    async def flow() -> None:
        made = await AsyncSandbox.create("base", metadata=metadata)
        try:
            await _async_snapshot_api(case, made, sandbox_test_id)
        finally:
            await made.kill()

    run(flow)


def _sync_fork(case: str, sandbox: Sandbox) -> None:
    if case == "test_fork":
        sandbox.files.write("/home/user/state.txt", "state before fork")
        forks = sandbox.fork()
        assert len(forks) == 1
        fork = forks[0]
        assert isinstance(fork, Sandbox)
        try:
            assert fork.sandbox_id != sandbox.sandbox_id
            assert sandbox.is_running() and fork.is_running()
            assert fork.files.read("/home/user/state.txt") == "state before fork"
            fork.files.write("/home/user/state.txt", "modified in fork")
            assert sandbox.files.read("/home/user/state.txt") == "state before fork"
        finally:
            fork.kill()
    elif case == "test_fork_multiple":
        forks = sandbox.fork(count=2, timeout=60)
        assert len(forks) == 2
        made = [f for f in forks if isinstance(f, Sandbox)]
        try:
            assert len(made) == 2
            ids = {s.sandbox_id for s in made}
            assert len(ids) == 2 and sandbox.sandbox_id not in ids
            assert all(f.is_running() for f in made)
        finally:
            for fork in made:
                fork.kill()
    elif case == "test_fork_by_id":
        forks = Sandbox.fork(sandbox.sandbox_id)
        assert len(forks) == 1
        fork = forks[0]
        assert isinstance(fork, Sandbox)
        try:
            assert fork.is_running()
        finally:
            fork.kill()
    elif case == "test_fork_killed_sandbox":
        sandbox.kill()
        with pytest.raises(SandboxNotFoundException):
            sandbox.fork()
    elif case == "test_fork_invalid_count":
        with pytest.raises(InvalidArgumentException):
            Sandbox.fork("sbx-test", count=0)
    else:
        raise AssertionError(case)


async def _async_fork(case: str, sandbox: AsyncSandbox) -> None:
    if case == "test_fork":
        await sandbox.files.write("/home/user/state.txt", "state before fork")
        forks = await sandbox.fork()
        assert len(forks) == 1
        fork = forks[0]
        assert isinstance(fork, AsyncSandbox)
        try:
            assert fork.sandbox_id != sandbox.sandbox_id
            assert await sandbox.is_running() and await fork.is_running()
            assert await fork.files.read("/home/user/state.txt") == "state before fork"
            await fork.files.write("/home/user/state.txt", "modified in fork")
            assert await sandbox.files.read("/home/user/state.txt") == "state before fork"
        finally:
            await fork.kill()
    elif case == "test_fork_multiple":
        forks = await sandbox.fork(count=2, timeout=60)
        assert len(forks) == 2
        made = [f for f in forks if isinstance(f, AsyncSandbox)]
        try:
            assert len(made) == 2
            ids = {s.sandbox_id for s in made}
            assert len(ids) == 2 and sandbox.sandbox_id not in ids
            for fork in made:
                assert await fork.is_running()
        finally:
            for fork in made:
                await fork.kill()
    elif case == "test_fork_by_id":
        forks = await AsyncSandbox.fork(sandbox.sandbox_id)
        assert len(forks) == 1
        fork = forks[0]
        assert isinstance(fork, AsyncSandbox)
        try:
            assert await fork.is_running()
        finally:
            await fork.kill()
    elif case == "test_fork_killed_sandbox":
        await sandbox.kill()
        with pytest.raises(SandboxNotFoundException):
            await sandbox.fork()
    elif case == "test_fork_invalid_count":
        with pytest.raises(InvalidArgumentException):
            await AsyncSandbox.fork("sbx-test", count=0)
    else:
        raise AssertionError(case)


FORK_CASES = [
    "test_fork",
    "test_fork_multiple",
    "test_fork_by_id",
    "test_fork_killed_sandbox",
    "test_fork_invalid_count",
]


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("case", FORK_CASES)
def test_e2b_sdk_fork_cases(sdk: str, alice: Client, flavour: str, case: str, no_snapshots_left: None) -> None:
    metadata = {"sandbox_test_id": new_test_id()}
    before = {w.id for w in alice.list()}
    if flavour == "sync":
        sandbox = Sandbox.create("base", metadata=metadata)
        try:
            _sync_fork(case, sandbox)
        finally:
            sandbox.kill()
    else:

        async def flow() -> None:
            made = await AsyncSandbox.create("base", metadata=metadata)
            try:
                await _async_fork(case, made)
            finally:
                await made.kill()

        run(flow)
    # Every fork killed by the case is gone: no workspace of alice's is left by it.
    assert {w.id for w in alice.list() if w.status not in ("deleted",)} <= before
