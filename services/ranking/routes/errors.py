"""How the ranking service's failures reach its API: InvalidRequest -> 422 naming the field.
(BundleNotServed -> 409 and ServiceUnavailable -> 503 are mapped in routes/score.py.)"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.errors import InvalidRequest, invalid_request_response


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidRequest)
    async def invalid(request: Request, exc: InvalidRequest) -> JSONResponse:
        return invalid_request_response(exc)
