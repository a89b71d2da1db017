"""How the feature store's failures reach its API (services/feature_store/errors.py):
UnknownItems -> 422 naming events[i].item_id; ServiceUnavailable (Redis down) -> 503."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.feature_store.errors import UnknownItems
from shared.contracts import ServiceUnavailable
from shared.errors import unprocessable


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownItems)
    async def unknown_items(_: Request, exc: UnknownItems) -> JSONResponse:
        return unprocessable(exc.to_detail())

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})
