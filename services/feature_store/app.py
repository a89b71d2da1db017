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
from typing import Any

from fastapi import FastAPI

from services.feature_store.routes import events, items, users
from services.feature_store.routes.errors import add_error_handlers
from services.feature_store.store import FeatureStore
from shared.admission import add_admission
from shared.memory import freeze_loaded
from shared.observability import add_ops_routes
from shared.openapi import add_allow_header, document_errors
from shared.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = FeatureStore.from_settings(settings)
        freeze_loaded(collect=True)  # imported modules: out of the collector's full passes
        try:
            yield
        finally:
            await app.state.store.aclose()

    app = FastAPI(title="vidrec feature store", lifespan=lifespan)
    document_errors(app)  # every status each route can answer (shared/openapi.py)
    add_allow_header(app)
    add_admission(app, settings, "feature_store")
    add_error_handlers(app)
    for module in (users, items, events):
        app.include_router(module.router)

    async def ready() -> dict[str, Any]:
        store: FeatureStore = app.state.store
        ok = await store.ready()
        return {"ready": ok, "redis": "ok" if ok else "unreachable"}

    add_ops_routes(app, ready)
    return app
