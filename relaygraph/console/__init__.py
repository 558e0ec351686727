"""The web console: runs, approvals and graphs in a browser, served by ``relaygraph api``.

Server-rendered pages (Jinja2) with a little plain JavaScript; every asset ships in this
package (no CDN), so it works air-gapped. ``install(app)`` adds it to the API's app: the
pages under ``/ui``, their assets under ``/ui/static``, and ``/`` redirecting to the runs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from relaygraph.console import forms, pages

__all__ = ["install"]

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    app.include_router(pages.router)
    app.include_router(forms.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/runs", status_code=303)
