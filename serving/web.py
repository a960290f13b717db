"""The web page the API serves: static HTML, JavaScript and CSS from ``serving/static/``.

``GET /`` redirects to ``/ui/``, which serves ``index.html``; the page calls the public API
only (``GET /v1/recommendations``, ``GET /v1/users/{user_id}/features``, ``POST /v1/events``),
so it shows exactly what a frontend would get. No build step and nothing from a CDN: the files
ship inside the package. Nothing is kept in memory; each file is read from disk per request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "add_web_page"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""Where the page's files live (shipped as package data)."""


def add_web_page(app: FastAPI) -> None:
    """Serve the page under ``/ui/`` and redirect ``/`` to it."""
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("ui/")  # relative: also right behind a path prefix
