"""The retrieval service over HTTP.

    POST   /v1/retrieve        RetrieveRequest -> RetrieveResponse
    PUT    /v1/items/{id}      ItemUpsert -> ItemMeta                  (admin)
    DELETE /v1/items/{id}      -> 204, 404 for an id never in the catalogue   (admin)
    POST   /admin/reload       {"bundle": version?} -> {"bundle": version}    (admin)
    PUT    /admin/bundles      {"bundles": [...]} -> {"main", "extra"}      (admin: experiments)
    GET    /healthz /readyz /metrics   (/readyz: bundle, index kind, device cpu|gpu, items)

Admin routes want `Authorization: Bearer <settings.admin_token>`: 401 without it, 403 when wrong.
A value the service cannot use answers 422 with FastAPI's error shape, `loc` naming the field.
The bundle is loaded in the lifespan, never at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.retrieval.routes import admin, items, retrieve
from services.retrieval.routes.errors import add_error_handlers
from services.retrieval.service import RetrievalService
from shared.admission import add_admission
from shared.experiments import bundles_to_serve
from shared.memory import freeze_loaded
from shared.observability import add_ops_routes
from shared.openapi import add_allow_header, document_errors
from shared.rollout import following, rollout_status
from shared.settings import Settings


def create_app(settings: Settings, service: RetrievalService | None = None) -> FastAPI:
    """The retrieval app. Pass `service` to share one already loaded (single-process serving)."""
    settings.check_serving("retrieval")  # refuses the default admin token outside development

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = None
        svc = service
        if svc is None:
            from services.feature_store.store import FeatureStore

            store = FeatureStore.from_settings(settings)
            svc = RetrievalService(settings, item_store=store)
        try:
            if not await svc.ready():
                await svc.reload()
                await svc.serve_bundles(bundles_to_serve(settings.experiments_file))
                freeze_loaded(collect=True)  # the bundle: out of the collector's full passes
            app.state.retrieval = svc
            if service is None:  # its own process: follow the active bundle
                async with following(app, settings, "retrieval", svc.reload,
                                     lambda: svc.readiness().get("bundle")):
                    yield
            else:
                yield
        finally:
            if store is not None:
                await store.aclose()

    app = FastAPI(title="vidrec retrieval", lifespan=lifespan)
    document_errors(app)  # every status each route can answer (shared/openapi.py)
    add_allow_header(app)
    add_admission(app, settings, "retrieval")
    app.state.settings = settings  # the admin check reads the token here (shared/admin.py)
    add_error_handlers(app)
    for module in (retrieve, items, admin):
        app.include_router(module.router)

    async def readiness() -> dict[str, Any]:
        svc: RetrievalService | None = getattr(app.state, "retrieval", None)
        if svc is None:
            return {"ready": False, "service": "retrieval"}
        return {**svc.readiness(), "rollout": rollout_status(app)}

    add_ops_routes(app, readiness)
    return app
