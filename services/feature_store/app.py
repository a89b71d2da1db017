"""The feature store's internal HTTP API (bodies: shared/contracts.py).

    POST /v1/hydrate                 HydrateRequest  -> UserState
    POST /v1/items/meta              ItemMetaRequest -> ItemMetaResponse
    POST /v1/events                  EventBatch      -> EventBatchResult
                                     422 naming events[i].item_id for unknown items
    GET  /v1/users/{id}/history?limit=N              -> HistoryResponse
    /healthz /readyz (Redis answers PING) /metrics

Redis unreachable -> 503, which FeatureStoreClient turns back into ServiceUnavailable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from services.feature_store.errors import UnknownItems
from services.feature_store.store import FeatureStore
from shared.admission import add_admission
from shared.contracts import (
    EventBatch,
    EventBatchResult,
    HistoryResponse,
    HydrateRequest,
    ItemMetaRequest,
    ItemMetaResponse,
    ServiceUnavailable,
    UserState,
)
from shared.errors import unprocessable
from shared.observability import add_ops_routes
from shared.openapi import document_errors
from shared.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = FeatureStore.from_settings(settings)
        try:
            yield
        finally:
            await app.state.store.aclose()

    app = FastAPI(title="vidrec feature store", lifespan=lifespan)
    document_errors(app)  # every status each route can answer (shared/openapi.py)
    add_admission(app, settings, "feature_store")

    def store() -> FeatureStore:
        return app.state.store

    @app.exception_handler(UnknownItems)
    async def unknown_items(_: Request, exc: UnknownItems) -> JSONResponse:
        return unprocessable(exc.to_detail())

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.post("/v1/hydrate")
    async def hydrate(req: HydrateRequest) -> UserState:
        return await store().hydrate(req.user_id, req.history_len)

    @app.post("/v1/items/meta")
    async def items_meta(req: ItemMetaRequest) -> ItemMetaResponse:
        return ItemMetaResponse(items=await store().item_meta(req.item_ids))

    @app.post("/v1/events")
    async def events(batch: EventBatch) -> EventBatchResult:
        return EventBatchResult(results=await store().record_events(batch.events))

    @app.get("/v1/users/{user_id:path}/history")  # ids may hold "/"
    async def history(user_id: str,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> HistoryResponse:
        return HistoryResponse(user_id=user_id, items=await store().history(user_id, limit))

    async def ready() -> dict:
        ok = await store().ready()
        return {"ready": ok, "redis": "ok" if ok else "unreachable"}

    add_ops_routes(app, ready)
    return app
