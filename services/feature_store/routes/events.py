"""POST /v1/events: record a batch of events (422 naming events[i].item_id when unknown)."""

from __future__ import annotations

from fastapi import APIRouter

from services.feature_store.deps import Store
from shared.contracts import EventBatch, EventBatchResult

router = APIRouter()


@router.post("/v1/events")
async def events(batch: EventBatch, store: Store) -> EventBatchResult:
    return EventBatchResult(results=await store.record_events(batch.events))
