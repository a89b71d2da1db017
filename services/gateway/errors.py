"""How failures reach the public API.

    dependency down/slow (ServiceUnavailable, Redis/HTTP errors, timeouts)
        -> 503 + Retry-After: the client should retry (an event is never silently dropped)
    request naming an item the catalog does not know (feature store UnknownItems)
        -> 422 naming the field (routes/events.py)
    an item upsert retrieval cannot accept (InvalidRequest) -> 422 naming the field
    delete of an item retrieval never had (ItemNotFound)   -> 404
    recommendations never take the 503 path: their stages degrade instead (pipeline/config.py)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.gateway.pipeline.stage import DEPENDENCY_ERRORS
from services.retrieval.errors import InvalidRequest, ItemNotFound

log = logging.getLogger("vidrec.gateway")

RETRY_AFTER_S = "1"


def field_error(loc: tuple[str | int, ...], msg: str, kind: str = "value_error",
                value: object = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape: {"detail": [{"loc", "msg", "type", "input"}]}."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind, "input": value}])


def add_error_handlers(app: FastAPI) -> None:
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("gateway: %s %s -> 503: %s: %s", request.method, request.url.path,
                    type(exc).__name__, exc)
        return JSONResponse({"detail": f"a dependency is unavailable ({type(exc).__name__}); "
                                       "retry shortly"},
                            status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidRequest)
        where = ("path", "item_id") if exc.field == "item_id" else ("body", exc.field)
        return JSONResponse({"detail": [{"loc": list(where), "msg": exc.problem,
                                         "type": "value_error"}]}, status_code=422)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    for exc_type in DEPENDENCY_ERRORS:
        app.add_exception_handler(exc_type, unavailable)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(ItemNotFound, not_found)
