"""How the retrieval service's failures reach its API.

    InvalidRequest      -> 422 naming the field (FastAPI's error shape)
    BundleNotServed     -> 409: the asked-for bundle is not served here
    ServiceUnavailable  -> 503, with "applied": true when only the metadata write failed
"""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from services.retrieval.errors import InvalidRequest, MetadataNotStored
from shared.contracts import BundleNotServed, ServiceUnavailable
from shared.errors import invalid_request_response


def add_error_handlers(app: FastAPI) -> None:
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
