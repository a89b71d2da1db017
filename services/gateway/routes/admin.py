"""POST /admin/reload: swap in a new bundle in retrieval, ranking and the gateway.
POST /admin/experiments/reload: read the experiments file now (400 naming the line if bad)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from services.gateway.deps import Admin, GatewayDep
from services.gateway.responses import JSON
from shared.admin import ReloadRequest
from shared.experiments import ConfigError

router = APIRouter(tags=["admin"])


@router.post("/admin/reload", dependencies=[Admin],
             summary="Load a bundle in every part; requests keep being answered meanwhile")
async def reload(gateway: GatewayDep, body: ReloadRequest | None = None) -> JSON:
    return JSON(await gateway.reload(body.bundle if body else None))


@router.post("/admin/experiments/reload", dependencies=[Admin],
             summary="Re-read the experiments file; a bad file is refused (400) and the "
                     "previous configuration keeps serving")
async def reload_experiments(gateway: GatewayDep) -> JSON:
    try:
        return JSON(await gateway.experiments.reload())
    except ConfigError as exc:
        raise HTTPException(400, detail=str(exc)) from None
