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
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse

from services.ranking.errors import RankerLoadError
from services.ranking.new_items import RedisOverlayContent
from services.ranking.service import RankingService
from shared.admin import Admin, ReloadRequest, ReloadResponse
from shared.admission import add_admission
from shared.bundle import BundleError
from shared.contracts import (
    BundleNotServed,
    BundlesRequest,
    BundlesResponse,
    ScoreRequest,
    ScoreResponse,
    ServiceUnavailable,
)
from shared.errors import InvalidRequest, invalid_request_response
from shared.experiments import bundles_to_serve
from shared.observability import add_ops_routes
from shared.openapi import add_allow_header, document_errors, error_response
from shared.rollout import announce, following, rollout_status
from shared.settings import Settings


async def _service(request: Request) -> RankingService:
    return request.app.state.ranking


Service = Annotated[RankingService, Depends(_service)]




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
            app.state.ranking = svc
            if service is None:  # its own process: follow the active bundle
                async with following(app, settings, "ranking", svc.reload,
                                     lambda: svc.info.version if svc.info else None):
                    yield
            else:
                yield
        finally:
            if service is None:
                svc.close()
            if new_items is not None:
                await new_items.aclose()

    app = FastAPI(title="vidrec ranking", lifespan=lifespan)
    document_errors(app)  # every status each route can answer (shared/openapi.py)
    add_allow_header(app)
    add_admission(app, settings, "ranking")
    app.state.settings = settings
    admin = Admin

    @app.exception_handler(InvalidRequest)
    async def invalid(request: Request, exc: InvalidRequest) -> JSONResponse:
        return invalid_request_response(exc)

    @app.post("/v1/score", tags=["ranking"], responses={409: error_response(409)})
    async def score(body: ScoreRequest, svc: Service) -> ScoreResponse:
        try:
            answer = await svc.score_detailed(body.requests, body.bundle, body.features)
        except BundleNotServed as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except ServiceUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        return answer

    @app.post("/admin/reload", tags=["admin"], dependencies=[admin])
    async def reload(svc: Service, request: Request,
                     body: ReloadRequest | None = None) -> ReloadResponse:
        try:
            version = await svc.reload(body.bundle if body else None)
        except RankerLoadError as exc:
            current = svc.info.version if svc.info else None
            raise InvalidRequest("bundle", f"{exc} (still serving {current})") from exc
        await announce(request.app, version)  # every replica follows
        return ReloadResponse(bundle=version)

    @app.put("/admin/bundles", tags=["admin"], dependencies=[admin])
    async def bundles(body: BundlesRequest, svc: Service) -> BundlesResponse:
        """Serve exactly these bundles besides the main one (experiment arms)."""
        try:
            return BundlesResponse(**await svc.serve_bundles(body.bundles))
        except (RankerLoadError, BundleError) as exc:
            raise InvalidRequest("bundles", str(exc)) from exc

    async def readiness() -> dict:
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
