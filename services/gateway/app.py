"""The public REST API (FastAPI). `create_app(settings)` builds it; the lifespan connects the
feature store, retrieval and ranking: in-process objects when their URL setting is empty,
HTTP clients otherwise (wiring.py). Tests pass the three dependencies in directly."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.gateway.console_stats import StatsWindow, sampling
from services.gateway.errors import add_error_handlers
from services.gateway.gateway import Gateway, load_catalog
from services.gateway.request_metrics import RequestMetrics
from services.gateway.routes import (
    admin,
    browse,
    console,
    events,
    experiments,
    items,
    recommendations,
    users,
)
from services.gateway.routes.pages import add_pages
from services.gateway.schemas import EventBatchIn, EventIn
from services.gateway.shed import popular_answer
from shared.admission import add_admission
from shared.contracts import FeatureStoreAPI, RankingAPI, RetrievalAPI
from shared.memory import freeze_loaded
from shared.observability import add_ops_routes
from shared.openapi import add_allow_header, document_errors
from shared.settings import Settings

log = logging.getLogger("vidrec.gateway")
DEFAULT_ADMIN_TOKEN = Settings.model_fields["admin_token"].default

DESCRIPTION = """Video recommendations: FAISS retrieval, an ONNX transformer ranker, a Redis
feature store. A dependency that fails degrades the answer (listed in `degraded`) instead of
failing it. Admin routes need `Authorization: Bearer <VIDREC_ADMIN_TOKEN>`. A person can try
it at `/` and watch it at `/console`."""


def create_app(settings: Settings, feature_store: FeatureStoreAPI | None = None,
               retrieval: RetrievalAPI | None = None,
               ranking: RankingAPI | None = None) -> FastAPI:
    settings.check_serving("gateway")  # refuses the default admin token outside development
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from services.gateway.wiring import connect

        if settings.admin_token == DEFAULT_ADMIN_TOKEN:
            log.warning("gateway: VIDREC_ADMIN_TOKEN is the default %r; set your own before "
                        "exposing the admin routes", DEFAULT_ADMIN_TOKEN)
        parts, closers = await connect(settings, feature_store, retrieval, ranking)
        gateway = Gateway(settings, *parts, catalog=load_catalog(settings), closers=closers,
                          bundle_change=app.state.admission.steady)
        await gateway.start()  # impressions ledger, experiments file
        app.state.gateway = gateway
        freeze_loaded(collect=True)  # the bundle, catalog and models: out of full GC passes
        try:
            async with sampling(app.state.stats):
                yield
        finally:
            await gateway.close()

    app = FastAPI(title="vidrec", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings  # the admin check reads the token here (shared/admin.py)
    app.state.stats = StatsWindow(settings.console_sample_s, settings.console_window_s)
    add_admission(app, settings, "gateway", degraded=popular_answer)  # before CORS: inside it
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    for module in (recommendations, events, items, users, experiments, admin, browse,
                   console):
        app.include_router(module.router)
    add_pages(app)  # / and /console: the pages for people (routes/pages.py)
    app.add_middleware(RequestMetrics)
    add_error_handlers(app)

    async def readiness() -> dict[str, Any]:
        gateway: Gateway | None = getattr(app.state, "gateway", None)
        return await gateway.readiness() if gateway else {"ready": False}

    add_ops_routes(app, readiness)
    # every status each route can answer (shared/openapi.py), and the event bodies' schemas
    document_errors(app, extend=_event_body_schemas)
    add_allow_header(app)
    return app


def _event_body_schemas(schema: dict[str, Any]) -> None:
    """POST /v1/events parses its body itself (for precise 422s); add its schemas to /docs."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (EventIn, EventBatchIn):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
