"""POST /v1/items/meta: the stored metadata of a list of items."""

from __future__ import annotations

from fastapi import APIRouter

from services.feature_store.deps import Store
from shared.contracts import ItemMetaRequest, ItemMetaResponse

router = APIRouter()


@router.post("/v1/items/meta")
async def items_meta(req: ItemMetaRequest, store: Store) -> ItemMetaResponse:
    return ItemMetaResponse(items=await store.item_meta(req.item_ids))
