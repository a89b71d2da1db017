"""GET /v1/users/{user_id}/history: what the user watched, newest last, with titles.
GET /v1/users/{user_id}/profile: the user's strongest and weakest tags (their taste)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.gateway.deps import GatewayDep
from services.gateway.responses import JSON
from services.gateway.routes.items import lookup_meta
from services.gateway.schemas import History, TasteProfile
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


@router.get("/v1/users/{user_id}/profile", response_model=TasteProfile,
            summary="A user's tag profile: strongest tags first, then the ones pushed down")
async def profile(
    gateway: GatewayDep,
    user_id: Annotated[str, Path(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> JSON:
    async with asyncio.timeout(gateway.settings.timeout_hydrate_s * 10):
        state = await gateway.feature_store.hydrate(user_id, gateway.settings.history_len)
    ranked = sorted(state.tag_profile.items(), key=lambda kv: kv[1], reverse=True)
    liked = [{"tag": t, "weight": round(w, 4)} for t, w in ranked if w > 0][:limit]
    disliked = [{"tag": t, "weight": round(w, 4)} for t, w in reversed(ranked) if w < 0][:limit]
    return JSON({"user_id": user_id, "known": state.known, "liked": liked,
                 "disliked": disliked, "seen": len(state.seen)})
