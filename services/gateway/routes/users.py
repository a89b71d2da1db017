"""GET /v1/users/{user_id}/history: what the user watched, newest last, with titles."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.gateway.deps import GatewayDep
from services.gateway.responses import JSON
from services.gateway.routes.items import lookup_meta
from services.gateway.schemas import History
from shared.validation import Identifier

router = APIRouter(tags=["users"])


@router.get("/v1/users/{user_id}/history", response_model=History,
            summary="A user's recent interactions, newest last")
async def history(
    gateway: GatewayDep,
    user_id: Annotated[Identifier, Path()],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JSON:
    async with asyncio.timeout(gateway.settings.timeout_hydrate_s * 10):
        entries = await gateway.feature_store.history(user_id, limit)
    meta = await lookup_meta(gateway, list(dict.fromkeys(e.item_id for e in entries)))
    items = []
    for e in entries:
        m = meta.get(e.item_id)
        items.append({"item_id": e.item_id, "type": e.type, "timestamp": e.timestamp,
                      "title": m.title if m else None, "tags": m.tags if m else []})
    return JSON({"user_id": user_id, "items": items})
