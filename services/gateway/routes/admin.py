"""POST /admin/reload: swap in a new bundle in retrieval, ranking and the gateway."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import Admin, GatewayDep
from services.gateway.responses import JSON

router = APIRouter(tags=["admin"])


class ReloadRequest(BaseModel):
    bundle: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$",
                               description="Bundle version (default: VIDREC_BUNDLE).")


@router.post("/admin/reload", dependencies=[Admin],
             summary="Load a bundle in every part; requests keep being answered meanwhile")
async def reload(gateway: GatewayDep, body: ReloadRequest | None = None) -> JSON:
    return JSON(await gateway.reload(body.bundle if body else None))
