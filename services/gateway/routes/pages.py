"""The pages for people, served from the package (services/gateway/web/, no CDN):

    GET /          try it: pick a user, see and act on their recommendations
    GET /console   the operator's console: readiness, live charts, offline metrics, reload
    GET /web/...   the pages' scripts and styles

The pages are static files that call the public API from the browser; no secret is ever put
into them (the console asks the person for the admin token and keeps it in memory only).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
# The pages are small and change with the package version: revalidate, never serve stale.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                      "style-src 'self'; script-src 'self'; "
                                      "connect-src 'self'; frame-ancestors 'none'"}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(WEB / name, media_type="text/html", headers=HEADERS)


@router.get("/")
async def try_it() -> FileResponse:
    return _page("index.html")


@router.get("/console")
async def console() -> FileResponse:
    return _page("console.html")


def add_pages(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB), name="web")
