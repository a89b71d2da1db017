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
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from services.retrieval.errors import InvalidRequest, ItemNotFound, MetadataNotStored
from services.retrieval.service import RetrievalService
from services.retrieval.similar import MAX_SIMILAR
from shared.admin import Admin, ReloadRequest, ReloadResponse
from shared.admission import add_admission
from shared.bundle import BundleError
from shared.contracts import (
    BundleNotServed,
    BundlesRequest,
    BundlesResponse,
    ItemMeta,
    ItemUpsert,
    RetrieveRequest,
    RetrieveResponse,
    ServiceUnavailable,
    SimilarResponse,
)
from shared.errors import invalid_request_response
from shared.experiments import bundles_to_serve
from shared.observability import add_ops_routes
from shared.openapi import document_errors, error_response
from shared.settings import Settings


async def _service(request: Request) -> RetrievalService:
    return request.app.state.retrieval


Service = Annotated[RetrievalService, Depends(_service)]


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
            app.state.retrieval = svc
            yield
        finally:
            if store is not None:
                await store.aclose()

    app = FastAPI(title="vidrec retrieval", lifespan=lifespan)
    document_errors(app)  # every status each route can answer (shared/openapi.py)
    add_admission(app, settings, "retrieval")
    app.state.settings = settings
    admin = Admin

    @app.exception_handler(InvalidRequest)
    async def invalid(request: Request, exc: InvalidRequest) -> JSONResponse:
        return invalid_request_response(exc)

    @app.exception_handler(BundleNotServed)
    async def not_served(request: Request, exc: BundleNotServed) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        # "applied": the change is in retrieval and its overlay; only the metadata write failed.
        return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            content={"detail": str(exc),
                                     "applied": isinstance(exc, MetadataNotStored)})

    @app.post("/v1/retrieve", tags=["retrieval"], response_model=RetrieveResponse,
              responses={409: error_response(409)})
    async def retrieve(body: RetrieveRequest, svc: Service) -> Response:
        results, version = svc.retrieve_now(body.queries, body.bundle)
        # Serialised by pydantic-core directly: no second validation of 100s of candidates.
        return Response(RetrieveResponse(results=results, bundle=version).model_dump_json(),
                        media_type="application/json")

    @app.get("/v1/items/{item_id}/similar", tags=["items"], response_model=SimilarResponse,
             responses={404: error_response(404)})
    async def similar(item_id: str, svc: Service,
                      k: Annotated[int, Query(ge=1, le=MAX_SIMILAR)] = 10) -> Response:
        try:
            items = svc.similar_now(item_id, k)
        except ItemNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        version = svc.state.version
        return Response(SimilarResponse(item_id=item_id, items=items, bundle=version)
                        .model_dump_json(), media_type="application/json")

    @app.put("/v1/items/{item_id}", tags=["items"], dependencies=[admin])
    async def upsert(item_id: str, body: ItemUpsert, svc: Service) -> ItemMeta:
        return await svc.upsert_item(item_id, body)

    @app.delete("/v1/items/{item_id}", tags=["items"], dependencies=[admin],
                responses={404: error_response(404)},
                status_code=status.HTTP_204_NO_CONTENT)
    async def delete(item_id: str, svc: Service) -> Response:
        try:
            await svc.delete_item(item_id)
        except ItemNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.post("/admin/reload", tags=["admin"], dependencies=[admin])
    async def reload(svc: Service, body: ReloadRequest | None = None) -> ReloadResponse:
        try:
            version = await svc.reload(body.bundle if body else None)
        except BundleError as exc:
            current = svc.readiness().get("bundle")
            raise InvalidRequest("bundle", f"{exc} (still serving {current})") from exc
        return ReloadResponse(bundle=version)

    @app.put("/admin/bundles", tags=["admin"], dependencies=[admin])
    async def bundles(body: BundlesRequest, svc: Service) -> BundlesResponse:
        """Serve exactly these bundles besides the main one (experiment arms)."""
        try:
            return BundlesResponse(**await svc.serve_bundles(body.bundles))
        except BundleError as exc:
            raise InvalidRequest("bundles", str(exc)) from exc

    async def readiness() -> dict:
        svc: RetrievalService | None = getattr(app.state, "retrieval", None)
        return svc.readiness() if svc else {"ready": False, "service": "retrieval"}

    add_ops_routes(app, readiness)
    return app
