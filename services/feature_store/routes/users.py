"""POST /v1/hydrate (a user's state for one request); GET /v1/users/{id}/history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.feature_store.deps import Store
from shared.contracts import HistoryResponse, HydrateRequest, UserState
from shared.openapi import error_response

router = APIRouter()


@router.post("/v1/hydrate")
async def hydrate(req: HydrateRequest, store: Store) -> UserState:
    return await store.hydrate(req.user_id, req.history_len)


# ids may hold "/"; an empty one matches no route (404)
@router.get("/v1/users/{user_id:path}/history", responses={404: error_response(404)})
async def history(user_id: str, store: Store,
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> HistoryResponse:
    return HistoryResponse(user_id=user_id, items=await store.history(user_id, limit))
