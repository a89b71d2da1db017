"""How failures reach the public API (the exceptions: shared/errors.py).

    dependency down/slow (DEPENDENCY_ERRORS: ServiceUnavailable, Redis/HTTP errors, timeouts)
        -> 503 + Retry-After: the client should retry (an event is never silently dropped)
    a service behind the gateway refused the gateway's admin token (AdminRejected)
        -> its 401/403, saying the gateway's VIDREC_ADMIN_TOKEN is not the service's; never 503
    request naming an item the catalog does not know (feature store UnknownItems)
        -> 422 naming the field (routes/events.py)
    an item upsert or a bundle retrieval/ranking cannot accept (InvalidRequest) -> 422 naming it
    an item id the catalogue does not hold (ItemNotFound)   -> 404
    recommendations never take the 503 path: their stages degrade instead (pipeline/config.py)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.errors import (
    DEPENDENCY_ERRORS,
    AdminRejected,
    InvalidRequest,
    ItemNotFound,
    invalid_request_response,
    validation_error,
)

log = logging.getLogger("vidrec.gateway")

RETRY_AFTER_S = "1"


def field_error(loc: tuple[str | int, ...], msg: str, kind: str = "value_error",
                value: object = None) -> RequestValidationError:
    """A 422 raised from a route, in FastAPI's own shape (shared/errors.py builds the entry)."""
    return RequestValidationError([validation_error(loc, msg, kind, value)])


def add_error_handlers(app: FastAPI) -> None:
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("gateway: %s %s -> 503: %s: %s", request.method, request.url.path,
                    type(exc).__name__, exc)
        return JSONResponse({"detail": f"a dependency is unavailable ({type(exc).__name__}); "
                                       "retry shortly"},
                            status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    async def admin_rejected(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AdminRejected)
        log.error("gateway: %s %s: a service refused the gateway's admin token: %s",
                  request.method, request.url.path, exc)
        return JSONResponse({"detail": f"a service behind the gateway refused its admin token "
                                       f"({exc}); VIDREC_ADMIN_TOKEN must be the same for the "
                                       "gateway and every service"}, status_code=exc.status)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidRequest)
        return invalid_request_response(exc)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    for exc_type in DEPENDENCY_ERRORS:
        app.add_exception_handler(exc_type, unavailable)
    app.add_exception_handler(AdminRejected, admin_rejected)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(ItemNotFound, not_found)
