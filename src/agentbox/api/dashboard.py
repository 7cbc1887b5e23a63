"""The dashboard: a page of the package's own files at /ui, over the same HTTP API as every client.

Nothing is loaded from elsewhere at run time (the content security policy says so to the
browser too); xterm.js comes from the npm registry at build time (`make ui`, part of `make
setup`) into `ui/vendor`, which is not in git.
"""

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

log = logging.getLogger("agentbox.api")

UI_DIR = Path(__file__).parents[1] / "ui"
PATH = "/ui"
HEADERS = {
    # Scripts, styles, fonts and API calls from this server only; the page is never framed.
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class DashboardFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ and send a browser that opens the server's root there."""
    if not (UI_DIR / "vendor" / "xterm.mjs").is_file():
        log.warning("the dashboard's terminal is missing xterm.js (%s/vendor): run `make ui` (needs npm)", UI_DIR)
    app.mount(PATH, DashboardFiles(directory=UI_DIR, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(PATH + "/")
