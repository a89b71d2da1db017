"""POST /admin/reload: swap in a new bundle in retrieval, ranking and the gateway."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import Admin, GatewayDep
from services.gateway.responses import JSON
from shared.admin import ReloadRequest

router = APIRouter(tags=["admin"])


@router.post("/admin/reload", dependencies=[Admin],
             summary="Load a bundle in every part; requests keep being answered meanwhile")
async def reload(gateway: GatewayDep, body: ReloadRequest | None = None) -> JSON:
    return JSON(await gateway.reload(body.bundle if body else None))
