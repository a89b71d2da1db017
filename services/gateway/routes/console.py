"""What the operator's console (`/console`) reads besides /readyz:

    GET /stats                  the last minutes of requests/s, p50/p99 per stage, degraded
                                answers (console_stats.py)
    GET /v1/bundle              the served bundle's offline numbers: metrics.json, retrieval
                                recall per source (retrieval.json), dataset and sizes
    GET /v1/bundle/metrics.png  the build's chart of metrics.json
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse

from services.gateway.console_stats import StatsWindow
from services.gateway.deps import GatewayDep
from services.gateway.gateway import Gateway
from services.gateway.responses import JSON
from shared.bundle import Bundle, BundleError

router = APIRouter()
MANIFEST_FIELDS = ("dataset", "created_at", "sizes", "split", "seconds")


@router.get("/stats", tags=["ops"],
            summary="The last minutes of this process's metrics, per interval (for /console)")
async def stats(request: Request) -> JSON:
    window: StatsWindow | None = getattr(request.app.state, "stats", None)
    if window is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "statistics are not running")
    return JSON(window.as_json())


def _bundle_path(gateway: Gateway) -> Path:
    version = gateway.catalog.version
    if not version:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            "this gateway has no bundle folder (VIDREC_ARTIFACTS_DIR)")
    try:
        return Bundle.open(gateway.settings.artifacts_dir, version).path
    except BundleError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def bundle_summary(path: Path) -> dict[str, Any]:
    manifest = _read_json(path / "manifest.json") or {}
    return {"version": path.name,
            "manifest": {k: manifest[k] for k in MANIFEST_FIELDS if k in manifest},
            "metrics": _read_json(path / "metrics.json"),
            "retrieval": _read_json(path / "retrieval.json"),
            "chart": (path / "metrics.png").is_file()}


@router.get("/v1/bundle", tags=["ops"], summary="The served bundle's offline metrics")
async def bundle(gateway: GatewayDep) -> JSON:
    return JSON(await asyncio.to_thread(bundle_summary, _bundle_path(gateway)))


@router.get("/v1/bundle/metrics.png", tags=["ops"], response_class=FileResponse,
            summary="The served bundle's metrics chart")
async def bundle_chart(gateway: GatewayDep) -> FileResponse:
    path = _bundle_path(gateway) / "metrics.png"
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{path.parent.name} has no metrics.png")
    return FileResponse(path, media_type="image/png")
