"""Every status code a route can answer, in the OpenAPI document of every service.

FastAPI documents 200 and 422; the rest comes from layers around the routes, so it is added here
in one pass over the generated document (`document_errors(app)`, called by each create_app):

    431  request line + headers too large (shared/server.py; no body)       every operation
    503  overload (shared/admission.py, Retry-After) or a dependency down    all but /healthz,
                                                                             /metrics
    400  a body that is not what its content type says                        with a body
    408  body too slow, 413 body too large (shared/admission.py)             with a body
    422  a value the service cannot use (FastAPI's HTTPValidationError shape)  with input
    401  no admin token, 403 a wrong one (shared/admin.py)                    admin operations

Statuses a route itself raises (404 for an unknown item, 409 for a bundle not served) are
declared on the route with `responses=`. /metrics is documented as Prometheus text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {"title": "Error", "type": "object", "required": ["detail"],
                "properties": {"detail": {"title": "Detail"}}}
ANY_OBJECT = {"type": "object"}  # 503: an error, or /readyz's state
VALIDATION_REF = {"$ref": "#/components/schemas/HTTPValidationError"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "string"}}}
METRICS_MEDIA_TYPE = "text/plain"

# status -> (description, JSON schema of the body or None for no body)
ERRORS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "400": ("The body is not valid for its content type", ERROR_SCHEMA),
    "401": ("Admin bearer token missing", ERROR_SCHEMA),
    "403": ("Admin bearer token wrong", ERROR_SCHEMA),
    "404": ("Not found", ERROR_SCHEMA),
    "408": ("The request body arrived too slowly", ERROR_SCHEMA),
    "409": ("The bundle version named is not served here", ERROR_SCHEMA),
    "410": ("Deleted", ERROR_SCHEMA),
    "413": ("The request body is too large", ERROR_SCHEMA),
    "422": ("A value the service cannot use; `loc` names it", VALIDATION_REF),
    "431": ("Request line and headers too large", None),
    "503": ("Overloaded or a dependency is unavailable; retry after Retry-After", ANY_OBJECT),
}


def error_response(status: int | str) -> dict[str, Any]:
    """`responses={404: error_response(404)}` on a route."""
    description, schema = ERRORS[str(status)]
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def _add(operation: dict[str, Any], status: str) -> None:
    responses = operation.setdefault("responses", {})
    if status not in responses:
        responses[status] = error_response(status)
        if status == "503":
            responses[status]["headers"] = RETRY_AFTER


def document_errors(app: FastAPI,
                    extend: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Replace app.openapi with one that documents every error status; `extend` may add to
    the generated document first."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        if extend is not None:
            extend(schema)
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                _document_operation(path, operation)
        _ensure_validation_schemas(schema)
        app.openapi_schema = schema
        return schema

    # FastAPI's documented way to extend the schema: replace app.openapi, a method to mypy
    app.openapi = openapi  # type: ignore[method-assign]


def _document_operation(path: str, operation: dict[str, Any]) -> None:
    _add(operation, "431")
    if path == "/metrics":
        operation["responses"]["200"] = {
            "description": "Prometheus text exposition format",
            "content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}}}
    if path not in ("/healthz", "/metrics"):
        _add(operation, "503")
    if "requestBody" in operation:
        for status in ("400", "408", "413", "422"):
            _add(operation, status)
    if operation.get("parameters"):
        _add(operation, "422")
    if operation.get("security"):
        _add(operation, "401")
        _add(operation, "403")


def _ensure_validation_schemas(schema: dict[str, Any]) -> None:
    """422 refers to FastAPI's HTTPValidationError: make sure it is in the components even
    when no route declared it itself."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ValidationError", {
        "title": "ValidationError", "type": "object", "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"title": "Location", "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
            "input": {"title": "Input"}, "ctx": {"title": "Context", "type": "object"}}})
    components.setdefault("HTTPValidationError", {
        "title": "HTTPValidationError", "type": "object",
        "properties": {"detail": {"title": "Detail", "type": "array",
                                  "items": {"$ref": "#/components/schemas/ValidationError"}}}})


def add_allow_header(app: FastAPI) -> None:
    """A 405 lists every method the path has in `Allow` (RFC 9110), not only those of the first
    route that matched it: GET, PUT and DELETE of /v1/items/{id} are three routes."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Match

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            methods: set[str] = set()
            for route in _leaf_routes(app.router.routes):
                match, _ = route.matches(request.scope)
                if match != Match.NONE:
                    methods.update(getattr(route, "methods", None) or ())
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, handler)


def _leaf_routes(routes: Any) -> Any:
    """The routes that answer requests, through included routers (FastAPI wraps those)."""
    for route in routes:
        if hasattr(route, "methods"):
            yield route
            continue
        inner = getattr(route, "routes", None)
        for attr in ("router", "original_router"):  # fastapi's wrapper of an included router
            if inner is None:
                inner = getattr(getattr(route, attr, None), "routes", None)
        if inner:
            yield from _leaf_routes(inner)
