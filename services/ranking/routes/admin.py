"""POST /admin/reload (every replica follows); PUT /admin/bundles (experiment arms' bundles).
A bundle the ranker cannot serve is a 422 naming the field; the old one keeps serving."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.ranking.deps import Admin, Service
from services.ranking.errors import RankerLoadError
from shared.admin import ReloadRequest, ReloadResponse
from shared.bundle import BundleError
from shared.contracts import BundlesRequest, BundlesResponse
from shared.errors import InvalidRequest
from shared.rollout import announce

router = APIRouter(tags=["admin"], dependencies=[Admin])


@router.post("/admin/reload")
async def reload(svc: Service, request: Request,
                 body: ReloadRequest | None = None) -> ReloadResponse:
    try:
        version = await svc.reload(body.bundle if body else None)
    except RankerLoadError as exc:
        current = svc.info.version if svc.info else None
        raise InvalidRequest("bundle", f"{exc} (still serving {current})") from exc
    await announce(request.app, version)  # every replica follows
    return ReloadResponse(bundle=version)


@router.put("/admin/bundles")
async def bundles(body: BundlesRequest, svc: Service) -> BundlesResponse:
    """Serve exactly these bundles besides the main one (experiment arms)."""
    try:
        return BundlesResponse(**await svc.serve_bundles(body.bundles))
    except (RankerLoadError, BundleError) as exc:
        raise InvalidRequest("bundles", str(exc)) from exc
