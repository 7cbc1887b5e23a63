"""Debian's Chromium, headless, as the dashboard's tests and the bench drive it (through Playwright)."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Browser, Playwright

CHROMIUM = os.environ.get("AGENTBOX_CHROMIUM", "/usr/bin/chromium")
# What the machine notes say Chromium needs here: no sandbox as root, and no background connections
# (this machine's closed network refuses them, many at a time).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright: Playwright) -> Browser:
    """Headless Chromium with a new, empty profile (Playwright makes its own user-data-dir each launch)."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
