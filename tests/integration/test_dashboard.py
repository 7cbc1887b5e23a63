"""The dashboard at /ui, driven in Debian's headless Chromium (through Playwright) against a live
agentbox whose workspaces are real gVisor sandboxes.

Snapshots, forks, volumes and templates (at the end): a snapshot taken from a workspace's page and listed, a
fork of two with a link to each, a workspace from a snapshot; a volume made, refused while mounted (the 409's
detail beside the form) and deleted; a template built from the page with its log arriving as it builds, a failed
one's log, and a workspace made from the ready one in the create form. Each test removes what it made.

Screenshots of the main pages land in tests/artifacts/dashboard (AGENTBOX_ARTIFACTS to move them).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from agentbox.client import APIError, Client
from tests.browser import launch

from .conftest import KEYS, Server, eventually

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("AGENTBOX_ARTIFACTS", Path(__file__).parents[1] / "artifacts")) / "dashboard"
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], f"the page threw: {errors}"


def sign_in(page: Page, server: Server, owner: str = "alice") -> None:
    page.goto(server.url + "/")
    page.get_by_label("API key").fill(KEYS[owner])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def create_in_dashboard(page: Page, **fields: str) -> str:
    """Fill the create form, submit it, and return the new workspace's id."""
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Create workspace").click()
    said = page.get_by_text(re.compile(r"^Created ws-[0-9a-f]+ in"))
    expect(said).to_be_visible()
    found = re.search(r"ws-[0-9a-f]+", said.inner_text())
    assert found is not None
    return found.group(0)


def confirm(page: Page, button: str) -> None:
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=button).click()


def test_a_workspace_from_sign_in_to_delete(page: Page, server: Server, alice: Client) -> None:
    """The issue's path: sign in, create, `echo hello` in the terminal, upload a file and see it,
    start a web server and open its preview, delete."""
    sign_in(page, server)
    workspace_id = create_in_dashboard(page, Labels="purpose=dashboard-test")
    row = page.locator(f'tr[data-workspace="{workspace_id}"]')
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("purpose=dashboard-test")
    expect(row).to_contain_text("runsc")
    shoot(page, "workspaces")

    # The terminal: keys typed into xterm.js reach a shell in the sandbox, its answer comes back.
    row.get_by_role("link", name=workspace_id).click()
    expect(page.get_by_text(re.compile(r"^Shell \(PID \d+\)"))).to_be_visible()
    page.locator("#terminal").click()
    page.keyboard.type("echo hel''lo from $(uname -s)\n")  # quoted so the echo itself cannot match
    expect(page.locator(".xterm-rows")).to_contain_text("hello from Linux")
    shoot(page, "terminal")

    # Files: upload through the file picker; the listing shows it; it opens as text.
    page.get_by_role("link", name="Files").click()
    page.locator("#upload").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"uploaded from the dashboard\n"}]
    )
    expect(page.get_by_role("status").filter(has_text="Uploaded 1 file")).to_be_visible()
    page.get_by_role("button", name="notes.txt").click()
    expect(page.get_by_label("Contents of /workspace/notes.txt")).to_have_text("uploaded from the dashboard\n")
    assert alice.exec(workspace_id, "cat /workspace/notes.txt").stdout == "uploaded from the dashboard\n"
    shoot(page, "files")

    # A web server started as a process; its live output; its port listed; its preview opened.
    page.get_by_role("link", name="Processes").click()
    page.get_by_label("Command").fill("python3 -u -m http.server 8000")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.get_by_label("Output")).to_contain_text("Serving HTTP on")
    shoot(page, "processes")
    page.get_by_role("link", name="Ports").click()
    preview_link = page.get_by_role("link", name="Open preview of port 8000")
    with page.expect_popup() as opened:
        preview_link.click()
    preview = opened.value
    expect(preview.get_by_role("link", name="notes.txt")).to_be_visible()
    preview.close()
    shoot(page, "ports")

    # Delete, confirmed: gone from the list, the API and the engine.
    page.get_by_role("link", name="← All workspaces").click()
    page.locator(f'tr[data-workspace="{workspace_id}"]').get_by_role("button", name=f"Delete {workspace_id}").click()
    confirm(page, "Delete")
    expect(page.locator(f'tr[data-workspace="{workspace_id}"]')).to_have_count(0)
    with pytest.raises(APIError) as gone:
        alice.get(workspace_id)
    assert gone.value.status_code == 404


def test_stop_start_and_extend_ask_first_and_do_it(page: Page, server: Server, alice: Client) -> None:
    workspace = alice.create(ttl_days=1, labels={"purpose": "dashboard-lifecycle"})
    try:
        sign_in(page, server)
        page.goto(f"{server.url}/ui/#/w/{workspace.id}/processes")
        header = page.locator(".card").first
        expect(header).to_contain_text("running")

        header.get_by_role("button", name=f"Stop {workspace.id}").click()
        page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
        assert alice.get(workspace.id).status == "running"  # cancelled: nothing happened

        header.get_by_role("button", name=f"Stop {workspace.id}").click()
        confirm(page, "Stop")
        expect(header).to_contain_text("stopped")
        assert alice.get(workspace.id).status == "stopped"
        expect(page.get_by_text("This workspace is stopped")).to_be_visible()

        header.get_by_role("button", name=f"Start {workspace.id}").click()
        confirm(page, "Start")
        expect(header.locator(".status")).to_have_text("running")

        before = alice.get(workspace.id).expires_at
        header.get_by_role("button", name=f"Extend {workspace.id}").click()
        confirm(page, "Extend")
        eventually(lambda: alice.get(workspace.id).expires_at != before, timeout=30)
    finally:
        alice.delete(workspace.id)


def test_drag_and_drop_uploads_into_the_open_folder(page: Page, server: Server, alice: Client) -> None:
    workspace = alice.create()
    try:
        alice.exec(workspace.id, "mkdir -p /workspace/inbox")
        sign_in(page, server)
        page.goto(f"{server.url}/ui/#/w/{workspace.id}/files")
        page.get_by_role("button", name="inbox/").click()
        expect(page.get_by_text("Empty folder")).to_be_visible()
        dropped = page.evaluate_handle(
            """() => {
                const data = new DataTransfer();
                data.items.add(new File(["dropped\\n"], "dropped.txt", {type: "text/plain"}));
                data.items.add(new File([new Uint8Array([0, 1, 2, 255])], "blob.bin"));
                return data;
            }"""
        )
        page.locator("#drop").dispatch_event("drop", {"dataTransfer": dropped})
        expect(page.get_by_role("status").filter(has_text="Uploaded 2 files to /workspace/inbox")).to_be_visible()
        expect(page.get_by_role("button", name="dropped.txt")).to_be_visible()
        assert alice.exec(workspace.id, "cat /workspace/inbox/dropped.txt").stdout == "dropped\n"
        assert alice.exec(workspace.id, "od -An -tu1 /workspace/inbox/blob.bin").stdout.split() == [
            "0",
            "1",
            "2",
            "255",
        ]

        page.get_by_role("button", name="blob.bin").click()
        expect(page.get_by_text("A binary file: download it")).to_be_visible()
        with page.expect_download() as downloading:
            page.get_by_role("button", name="Download").click()
        saved = downloading.value
        assert saved.suggested_filename == "blob.bin"
        assert Path(saved.path()).read_bytes() == bytes([0, 1, 2, 255])
    finally:
        alice.delete(workspace.id)


def test_each_owner_sees_only_their_own_and_the_key_lives_in_the_tab(
    browser: Browser, page: Page, server: Server, alice: Client
) -> None:
    workspace = alice.create(labels={"purpose": "dashboard-owners"})
    try:
        page.goto(server.url + "/ui/")
        page.get_by_label("API key").fill("not-a-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("invalid API key")
        expect(page.get_by_label("API key")).to_be_visible()

        sign_in(page, server, "bob")
        expect(page.get_by_text("No workspaces yet")).to_be_visible()
        expect(page.locator(f'tr[data-workspace="{workspace.id}"]')).to_have_count(0)
        page.goto(f"{server.url}/ui/#/w/{workspace.id}")  # alice's, by its id: bob is sent back
        expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()

        assert page.evaluate("localStorage.length") == 0  # kept in the tab's session storage only
        other = browser.new_page()
        other.goto(server.url + "/ui/")
        expect(other.get_by_label("API key")).to_be_visible()
        other.close()

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("API key")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        alice.delete(workspace.id)


def test_an_admin_makes_and_revokes_keys_and_others_see_only_their_own(
    browser: Browser, page: Page, server: Server
) -> None:
    sign_in(page, server)  # alice: the first owner of WORKSPACE_API_KEYS, an admin
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    form = page.get_by_role("form", name="New API key")
    form.get_by_label("Owner").fill("erin")
    form.get_by_label("Name").fill("dashboard-made")
    form.get_by_label("Max workspaces").fill("2")
    form.get_by_role("button", name="Make key").click()
    secret = page.get_by_label("The new key").input_value()
    assert secret.startswith("agbx_")
    with Client(server.url, secret) as erin:
        made = erin.my_key()
        assert made.owner == "erin" and made.max_workspaces == 2 and erin.list() == []
        row = page.get_by_role("row").filter(has_text=made.id)
        expect(row).to_contain_text("2 workspaces")
        shoot(page, "keys")
        row.get_by_role("button", name=f"Revoke {made.id}").click()
        confirm(page, "Revoke")
        expect(page.get_by_role("row").filter(has_text=made.id)).to_have_count(0)
        with pytest.raises(APIError) as refused:
            eventually(lambda: erin.list(), timeout=2)
        assert refused.value.status_code == 401

    other = browser.new_page()  # bob is no admin: his own keys, no form
    sign_in(other, server, "bob")
    other.get_by_role("link", name="API keys").click()
    expect(other.get_by_text("no", exact=True)).to_be_visible()
    expect(other.get_by_role("form", name="New API key")).to_have_count(0)
    expect(other.get_by_role("row").filter(has_text="erin")).to_have_count(0)
    expect(other.get_by_role("row").filter(has_text="bob")).to_have_count(1)
    other.close()


def test_api_errors_read_as_sentences(page: Page, server: Server) -> None:
    sign_in(page, server)
    page.get_by_label("Memory", exact=True).fill("lots")
    page.get_by_role("button", name="Create workspace").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("memory")
    expect(alert).not_to_contain_text("[object Object]")
    page.get_by_label("Dismiss the error").click()
    expect(alert).to_be_hidden()

    page.get_by_label("Memory", exact=True).fill("")
    page.get_by_label("Labels", exact=True).fill("no-equals-sign")
    page.get_by_role("button", name="Create workspace").click()
    expect(alert).to_contain_text("key=value")


def test_usage_charts_and_the_server_page(page: Page, server: Server, alice: Client) -> None:
    workspace = alice.create(cpu=1, memory="512M")
    try:
        # Busy for a while: a core's worth of CPU and 64 MiB held.
        alice.start_process(
            workspace.id,
            command=[
                "python3",
                "-c",
                "import time\nb = bytearray(64 << 20)\nend = time.time() + 20\nwhile time.time() < end: pass",
            ],
        )
        busy = eventually(lambda: [s for s in alice.usage(workspace.id).samples if s.cpu and s.cpu > 0.5], timeout=40)
        assert busy and all(s.memory > 64 << 20 for s in busy)
        assert alice.get(workspace.id).usage is not None

        sign_in(page, server)
        page.goto(f"{server.url}/ui/#/w/{workspace.id}/usage")
        expect(page.get_by_role("img", name=re.compile(r"^CPU over the last hour, now \d+% of 1 CPU"))).to_be_visible()
        expect(
            page.get_by_role("img", name=re.compile(r"^Memory over the last hour, now \d+ MiB of 512 MiB"))
        ).to_be_visible()
        shoot(page, "usage")

        page.get_by_role("link", name="Audit").click()
        expect(page.get_by_role("table", name="Audit trail")).to_contain_text("POST /processes")
        shoot(page, "audit")

        page.get_by_role("link", name="Server").click()
        expect(page.get_by_role("heading", name="Health")).to_be_visible()
        expect(page.get_by_text(re.compile(r"^yes, platform (systrap|ptrace)"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"^\d+ of 10 \(WORKSPACE_MAX_CONCURRENT\)"))).to_be_visible()
        expect(page.get_by_text("off (WORKSPACE_WARM_POOL_SIZE=0)")).to_be_visible()
        providers = page.get_by_role("table", name="Providers")
        expect(providers).to_contain_text("gvisor")
        expect(providers).to_contain_text("runsc")
        expect(page.get_by_role("link", name="API reference (/docs)")).to_have_attribute("href", "/docs")
        page.get_by_role("button", name="Show the metrics here").click()
        expect(page.get_by_label("Metrics")).to_contain_text("agentbox_")
        shoot(page, "server")
    finally:
        alice.delete(workspace.id)


def test_a_narrow_window_by_keyboard_alone(browser: Browser, server: Server, alice: Client) -> None:
    workspace = alice.create(labels={"purpose": "dashboard-narrow"})
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(server.url + "/ui/")
        page.keyboard.type(KEYS["alice"])  # the key field has the focus
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
        link = page.get_by_role("link", name=workspace.id)
        for _ in range(80):  # Tab until the workspace's link has the focus, then open it
            page.keyboard.press("Tab")
            if link.evaluate("element => element === document.activeElement"):
                break
        else:
            pytest.fail("the workspace's link cannot be reached with Tab")
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name=workspace.id)).to_be_visible()
        # Nothing wider than the window: tables scroll inside their own box.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        expect(page.get_by_text(re.compile(r"^Shell \(PID \d+\)"))).to_be_visible()
        shoot(page, "narrow")
    finally:
        context.close()
        alice.delete(workspace.id)


def test_the_dashboards_looks_neither_keep_a_workspace_alive_nor_fill_its_trail(alice: Client) -> None:
    """What the dashboard asks every few seconds (the workspace, its usage, ports and processes)."""
    workspace = alice.create(ttl_days=1)
    try:
        for _ in range(2):
            alice.get(workspace.id)
            alice.usage(workspace.id)
            alice.listening_ports(workspace.id)
            alice.processes(workspace.id)
        looked = alice.get(workspace.id)
        assert looked.last_used_at is None and looked.expires_at == workspace.expires_at
        assert alice.audit(workspace.id).records == []

        alice.exec(workspace.id, "true")  # a use
        used = alice.get(workspace.id)
        assert used.last_used_at is not None and used.expires_at is not None and workspace.expires_at is not None
        assert used.expires_at > workspace.expires_at
        assert [r.action for r in alice.audit(workspace.id).records] == ["POST /exec"]
    finally:
        alice.delete(workspace.id)


def test_a_suspended_workspace_shows_so_and_opening_it_wakes_it(page: Page, server: Server, alice: Client) -> None:
    workspace = alice.create(idle_timeout=2, labels={"purpose": "dashboard-suspend"})
    try:
        eventually(lambda: alice.get(workspace.id).suspended)
        sign_in(page, server)  # the list reads rows only: it leaves the workspace asleep
        expect(page.get_by_role("row").filter(has_text=workspace.id).locator(".status")).to_have_text("suspended")
        assert alice.get(workspace.id).suspended
        page.goto(f"{server.url}/ui/#/w/{workspace.id}/processes")  # its processes: a look inside, which wakes it
        expect(page.locator(".card").first.locator(".status")).to_have_text("running")
        assert not alice.get(workspace.id).suspended
    finally:
        alice.delete(workspace.id)


# --- snapshots, forks, volumes and templates (issue 30) ---

BASE = "agentbox/workspace:bookworm"  # the default workspace image, on the engine already: builds never pull
WORKSPACE_ID = re.compile(r"ws-[0-9a-f]+")


@pytest.fixture
def made(alice: Client) -> Iterator[list[str]]:
    """Workspace ids a test made (through the page or the API), deleted after it whatever happened."""
    ids: list[str] = []
    yield ids
    for workspace_id in ids:
        with contextlib.suppress(APIError):
            alice.delete(workspace_id)


def test_snapshot_fork_and_a_workspace_from_a_snapshot_on_a_workspaces_page(
    page: Page, server: Server, alice: Client, made: list[str]
) -> None:
    source = alice.create(labels={"purpose": "dashboard-snapshots"})
    made.append(source.id)
    alice.exec(source.id, "echo kept-in-the-snapshot > /workspace/note")
    sign_in(page, server)
    page.goto(f"{server.url}/ui/#/w/{source.id}/snapshots")
    expect(page.get_by_text("No snapshots of this workspace yet.")).to_be_visible()

    # A named snapshot: the answer says its memory was not kept, and why (the workspace has a network).
    page.get_by_label("Snapshot name").fill("dash-snap")
    page.get_by_role("button", name="Snapshot", exact=True).click()
    taken = page.get_by_role("status").filter(has_text="Took dash-snap")
    expect(taken).to_contain_text("files only")
    expect(taken).to_contain_text('"network": "none"')
    snapshot = alice.snapshots(workspace_id=source.id).snapshots[0]
    assert snapshot.name == "dash-snap"
    listed = page.get_by_role("table", name="Snapshots of this workspace").locator(f'tr[data-snapshot="{snapshot.id}"]')
    expect(listed).to_contain_text("dash-snap")
    expect(listed).to_contain_text("files only")

    # A fork of two: a link to each new workspace, each with the source's file.
    page.get_by_label("Copies").fill("2")
    page.get_by_role("button", name="Fork", exact=True).click()
    expect(page.get_by_text("Made 2 of 2")).to_be_visible()
    links = page.get_by_role("list", name="Forked workspaces").get_by_role("link")
    expect(links).to_have_count(2)
    forks = links.all_inner_texts()
    made.extend(forks)
    assert len(set(forks)) == 2 and source.id not in forks
    for fork in forks:
        assert WORKSPACE_ID.fullmatch(fork)
        assert alice.exec(fork, "cat /workspace/note").stdout == "kept-in-the-snapshot\n"
    shoot(page, "snapshots-tab")

    # A workspace from the snapshot, from the Snapshots page (every snapshot of the owner's), linked.
    page.locator("#nav").get_by_role("link", name="Snapshots").click()
    expect(page.get_by_role("heading", name="Snapshots", exact=True)).to_be_visible()
    row = page.get_by_role("table", name="Snapshots", exact=True).locator(f'tr[data-snapshot="{snapshot.id}"]')
    expect(row).to_contain_text(source.id)
    row.get_by_role("button", name="New workspace from dash-snap").click()
    created = page.get_by_role("status").filter(has_text=re.compile(r"^Created ws-[0-9a-f]+ from dash-snap"))
    expect(created).to_be_visible()
    from_snapshot = created.get_by_role("link").inner_text()
    made.append(from_snapshot)
    assert alice.exec(from_snapshot, "cat /workspace/note").stdout == "kept-in-the-snapshot\n"
    page.get_by_label("Find by name").fill("no-such-snapshot")
    page.get_by_role("button", name="Find").click()
    expect(page.get_by_text("No snapshot of that name.")).to_be_visible()
    page.get_by_label("Find by name").fill("dash-snap")
    page.get_by_role("button", name="Find").click()
    expect(page.get_by_role("table", name="Snapshots", exact=True).locator("tbody tr")).to_have_count(1)
    shoot(page, "snapshots")

    # A workspace without network keeps its memory and processes in a snapshot, and the page says so.
    quiet = alice.create(network="none", labels={"purpose": "dashboard-snapshots"})
    made.append(quiet.id)
    page.goto(f"{server.url}/ui/#/w/{quiet.id}/snapshots")
    page.get_by_role("button", name="Snapshot", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Took snap-")).to_contain_text("memory and processes kept")
    kept = alice.snapshots(workspace_id=quiet.id).snapshots
    assert len(kept) == 1 and kept[0].memory_kept and kept[0].name is None
    expect(page.locator(f'tr[data-snapshot="{kept[0].id}"]')).to_contain_text("kept")
    alice.delete_snapshot(kept[0].id)
    page.goto(f"{server.url}/ui/#/snapshots")

    # Deleted after a confirmation: gone from the page and the API; the workspaces made from it go on.
    row.get_by_role("button", name="Delete dash-snap").click()
    confirm(page, "Delete")
    expect(row).to_have_count(0)
    assert alice.snapshots(workspace_id=source.id).snapshots == []
    assert alice.get(from_snapshot).status == "running"


def test_a_fork_past_a_quota_says_which_copies_were_not_made(page: Page, server: Server, alice: Client) -> None:
    key = alice.create_key("dash-quota", "fork-test", max_workspaces=2)
    made: list[str] = []
    try:
        with Client(server.url, key.secret) as owner:
            source = owner.create(labels={"purpose": "dashboard-fork-quota"})
            made.append(source.id)
            page.goto(server.url + "/ui/")
            page.get_by_label("API key").fill(key.secret)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
            page.goto(f"{server.url}/ui/#/w/{source.id}/snapshots")
            page.get_by_label("Copies").fill("3")
            page.get_by_role("button", name="Fork", exact=True).click()
            expect(page.get_by_text("Made 1 of 3")).to_be_visible()
            members = page.get_by_role("list", name="Forked workspaces").get_by_role("listitem")
            expect(members).to_have_count(3)
            link = members.get_by_role("link")
            expect(link).to_have_count(1)
            made.append(link.inner_text())
            refused = members.filter(has_text="not made (429)")
            expect(refused).to_have_count(2)
            expect(refused.first).to_contain_text("max_workspaces (2)")
            assert {w.id for w in owner.list()} == set(made)
    finally:
        with Client(server.url, key.secret) as owner:
            for workspace_id in made:
                with contextlib.suppress(APIError):
                    owner.delete(workspace_id)
        alice.revoke_key(key.id)


def test_a_volume_made_refused_while_mounted_and_deleted(
    page: Page, server: Server, alice: Client, made: list[str]
) -> None:
    sign_in(page, server)
    page.locator("#nav").get_by_role("link", name="Volumes").click()
    form = page.get_by_role("form", name="New volume")
    try:
        form.get_by_label("Name").fill("dash-vol")
        form.get_by_label("Size").fill("64M")
        form.get_by_role("button", name="Create volume").click()
        row = page.locator('tr[data-volume="dash-vol"]')
        expect(row).to_contain_text("64M")
        expect(row).to_contain_text("none")  # mounted by no workspace
        assert alice.volume("dash-vol").size == "64M"

        # A second of the same name: the API's 409 is said beside the form.
        form.get_by_label("Name").fill("dash-vol")
        form.get_by_label("Size").fill("64M")
        form.get_by_role("button", name="Create volume").click()
        expect(form.get_by_role("alert")).to_contain_text("dash-vol")

        # Mounted by a workspace made in the create form; it writes there.
        page.locator("#nav").get_by_role("link", name="Workspaces").click()
        page.get_by_label("Volumes", exact=True).fill("dash-vol:/mnt/x:y")
        page.get_by_role("button", name="Create workspace").click()
        expect(page.get_by_role("alert")).to_contain_text("name:/path or name:/path:ro")
        user = alice.get(create_in_dashboard(page, Volumes="dash-vol:/mnt/data"))
        made.append(user.id)
        assert [(v.name, v.path, v.read_only) for v in user.volumes] == [("dash-vol", "/mnt/data", False)]
        assert alice.exec(user.id, "echo kept > /mnt/data/note && cat /mnt/data/note").stdout == "kept\n"
        page.locator("#nav").get_by_role("link", name="Volumes").click()
        expect(row.get_by_role("link", name=user.id)).to_be_visible()
        row.get_by_role("button", name="Delete dash-vol").click()
        confirm(page, "Delete")
        expect(form.get_by_role("alert")).to_contain_text(user.id)
        assert alice.volume("dash-vol").used_by == [user.id]
        shoot(page, "volumes")

        alice.delete(user.id)
        row.get_by_role("button", name="Delete dash-vol").click()
        confirm(page, "Delete")
        expect(row).to_have_count(0)
        expect(form.get_by_role("alert")).to_be_hidden()
        with pytest.raises(APIError) as gone:
            alice.volume("dash-vol")
        assert gone.value.status_code == 404
    finally:
        for workspace_id in made:  # before the volume, which they mount
            with contextlib.suppress(APIError):
                alice.delete(workspace_id)
        with contextlib.suppress(APIError):
            alice.delete_volume("dash-vol")


def test_a_template_built_from_the_page_and_a_workspace_made_from_it(
    page: Page, server: Server, alice: Client, made: list[str]
) -> None:
    sign_in(page, server)
    page.locator("#nav").get_by_role("link", name="Templates").click()
    form = page.get_by_role("form", name="New template")
    log = page.get_by_label("Build log", exact=True)
    try:
        # A failing RUN: its log says why, and so does its row.
        form.get_by_label("Dockerfile").fill(f"FROM {BASE}\nRUN echo '<i>going</i>' d''own && exit 3\n")
        form.get_by_label("Name").fill("dash-broken")
        form.get_by_role("button", name="Build").click()
        expect(log).to_contain_text("<i>going</i> down")  # the build's output as text, never as markup
        expect(log.locator("i")).to_have_count(0)
        expect(log).to_contain_text("[build failed")
        expect(page.locator('tr[data-template="dash-broken:latest"] .status')).to_have_text("failed")

        # One that builds: each step's output arrives while it builds, then its end; its row becomes ready.
        steps = "for i in 1 2 3; do echo dash-st''ep-$i; sleep 1; done; echo made > /opt/dash-made"
        form.get_by_label("Dockerfile").fill(f"FROM {BASE}\nRUN {steps}\n")
        form.get_by_label("Name").fill("dash-tpl")
        form.get_by_label("Tag").fill("v1")
        form.get_by_label("Start command").fill("sleep infinity")
        form.get_by_label("Ready command").fill("test -f /opt/dash-made")
        form.get_by_role("button", name="Build").click()
        expect(log).to_contain_text("dash-step-1")
        assert "dash-step-3" not in log.inner_text()  # followed live: the step still runs (2 s to go)
        expect(log).to_contain_text("dash-step-3")
        expect(log).to_contain_text("[build ready]")
        row = page.locator('tr[data-template="dash-tpl:v1"]')
        expect(row.locator(".status")).to_have_text("ready")
        expect(row).to_contain_text("ready: test -f /opt/dash-made")
        template = alice.template("dash-tpl:v1")
        assert template.status == "ready"
        shoot(page, "templates")
        # Any template's log, from its row: the failed one's again.
        page.get_by_role("button", name="Build log of dash-broken:latest").click()
        expect(page.get_by_role("heading", name="Build log of dash-broken:latest")).to_be_visible()
        expect(log).to_contain_text("[build failed")
        expect(log).not_to_contain_text("dash-step-1")

        # The workspaces' create form offers it; the workspace runs its image with the step's file.
        page.locator("#nav").get_by_role("link", name="Workspaces").click()
        page.get_by_label("Template", exact=True).select_option(label="dash-tpl:v1")
        page.get_by_role("button", name="Create workspace").click()
        said = page.get_by_text(re.compile(r"^Created ws-[0-9a-f]+ in"))
        expect(said).to_be_visible()
        found = WORKSPACE_ID.search(said.inner_text())
        assert found is not None
        made.append(found.group(0))
        workspace = alice.get(found.group(0))
        assert workspace.image == template.image
        assert alice.exec(workspace.id, "cat /opt/dash-made").stdout == "made\n"

        # Deleted from the page once its workspace is gone: no longer listed or offered.
        alice.delete(workspace.id)
        page.locator("#nav").get_by_role("link", name="Templates").click()
        for name in ("dash-tpl:v1", "dash-broken:latest"):
            page.locator(f'tr[data-template="{name}"]').get_by_role("button", name=f"Delete {name}").click()
            confirm(page, "Delete")
            expect(page.locator(f'tr[data-template="{name}"]')).to_have_count(0)
        eventually(lambda: alice.templates() == [], timeout=10)
    finally:
        for workspace_id in made:
            with contextlib.suppress(APIError):
                alice.delete(workspace_id)
        for name in ("dash-tpl:v1", "dash-broken"):
            with contextlib.suppress(APIError):
                alice.delete_template(name)
