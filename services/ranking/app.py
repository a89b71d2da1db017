"""The ranking service over HTTP: POST /v1/score, POST /admin/reload, PUT /admin/bundles
(experiment arms' bundles served side by side), /healthz /readyz /metrics.

The model is loaded in the lifespan, never at import time; a bundle whose ranker does not match
what the scorer feeds stops start-up with `ModelSchemaMismatch` naming the difference. Items
upserted while serving get their content from the feature store's overlay in Redis
(new_items.py); with Redis down they are still scored, on the unknown-item embedding alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.ranking.new_items import RedisOverlayContent
from services.ranking.routes import admin, score
from services.ranking.routes.errors import add_error_handlers
from services.ranking.service import RankingService
from shared.admission import add_admission
from shared.experiments import bundles_to_serve
from shared.memory import freeze_loaded
from shared.observability import add_ops_routes
from shared.openapi import add_allow_header, document_errors
from shared.rollout import following, rollout_status
from shared.settings import Settings


def create_app(settings: Settings, service: RankingService | None = None) -> FastAPI:
    """The ranking app. Pass `service` to share one already created (single-process serving)."""
    settings.check_serving("ranking")  # refuses the default admin token outside development

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        new_items = None if service else RedisOverlayContent.from_settings(settings)
        svc = service or RankingService(settings, new_item_content=new_items)
        try:
            if not await svc.ready():
                await svc.reload()
                await svc.serve_bundles(bundles_to_serve(settings.experiments_file))
                freeze_loaded(collect=True)  # the bundle: out of the collector's full passes
            app.state.ranking = svc
            if service is None:  # its own process: follow the active bundle
                async with following(app, settings, "ranking", svc.reload,
                                     lambda: svc.info.version if svc.info else None):
                    yield
            else:
                yield
        finally:
            if new_items is not None:
                await new_items.aclose()

    app = FastAPI(title="vidrec ranking", lifespan=lifespan)
    document_errors(app)  # every status each route can answer (shared/openapi.py)
    add_allow_header(app)
    add_admission(app, settings, "ranking")
    app.state.settings = settings  # the admin check reads the token here (shared/admin.py)
    add_error_handlers(app)
    for module in (score, admin):
        app.include_router(module.router)

    async def readiness() -> dict[str, Any]:
        svc: RankingService | None = getattr(app.state, "ranking", None)
        info = svc.info if svc else None
        if info is None:
            return {"ready": False, "service": "ranking", "model_version": None}
        return {"ready": True, "service": "ranking", "model_version": info.version,
                "rollout": rollout_status(app),
                "provider": "CUDA" if info.provider == "CUDAExecutionProvider" else "CPU",
                "intra_threads": info.intra_threads, "inter_threads": info.inter_threads,
                "max_history": info.max_history, "content_dim": info.content_dim,
                "items": info.items, "ranker": info.kind}

    add_ops_routes(app, readiness)
    return app
