"""Every failure that crosses a service boundary, in one place.

    RuntimeError
     +-- ServiceUnavailable     a dependency could not answer: refused, reset, timed out, 5xx,
     |    |                     malformed answer. Retry later; the gateway degrades on it.
     |    +-- BundleNotServed   a request named a bundle version not held there (HTTP 409)
     |    +-- (retrieval) MetadataNotStored, (ranking) ScoreCountMismatch, ScoreRequestRejected
    AdminRejected               a service refused this caller's admin token: missing (401) or
                                wrong (403). A configuration error, never an outage: it is not
                                a ServiceUnavailable nor an OSError, so no 503 comes of it.
    ValueError
     +-- InvalidRequest         a value the service cannot use; `field` names it (HTTP 422)
    LookupError
     +-- ItemNotFound           an item id the catalogue does not hold (HTTP 404)

DEPENDENCY_ERRORS is what "a dependency is down or slow" means wherever a caller degrades or
answers 503: ServiceUnavailable, timeouts, refused/reset connections, Redis and httpx transport
failures. Not bare OSError: a PermissionError or FileNotFoundError is a bug or a wrong setting,
and must not read as "retry shortly".

`unprocessable` builds every 422 body, in FastAPI's own shape (its HTTPValidationError schema:
{"detail": [{"loc", "msg", "type", "input"?}]}), so clients parse one shape everywhere.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError


class ServiceUnavailable(RuntimeError):
    """A dependency could not answer (connection refused, timeout, 5xx)."""


class BundleNotServed(ServiceUnavailable):
    """A request named a bundle version the service does not hold (HTTP 409 on the wire)."""


class AdminRejected(Exception):
    """A service refused the admin token: missing (status 401) or wrong (403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class InvalidRequest(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ItemNotFound(LookupError):
    def __init__(self, item_id: str) -> None:
        super().__init__(f"item {item_id!r} is not in the catalogue")
        self.item_id = item_id


DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    ServiceUnavailable, TimeoutError, ConnectionError, RedisError, httpx.HTTPError)


def field_loc(field: str, where: str = "body") -> list[str | int]:
    """'queries[0].caps.ann' -> [where, 'queries', 0, 'caps', 'ann']."""
    loc: list[str | int] = [where]
    for part in field.replace("]", "").replace("[", ".").split("."):
        if part:
            loc.append(int(part) if part.isdigit() else part)
    return loc


def validation_error(loc: list[str | int] | tuple[str | int, ...], msg: str,
                     kind: str = "value_error", value: Any = None) -> dict[str, Any]:
    """One entry of a 422's `detail`."""
    error: dict[str, Any] = {"loc": list(loc), "msg": msg, "type": kind}
    if value is not None:
        error["input"] = value
    return error


def unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    """The 422 response for these `validation_error`s."""
    return JSONResponse({"detail": errors}, status_code=422)


def invalid_request_response(exc: InvalidRequest) -> JSONResponse:
    """422 for an InvalidRequest: an `item_id` is in the path, anything else in the body."""
    where = "path" if exc.field == "item_id" else "body"
    return unprocessable([validation_error(field_loc(exc.field, where), exc.problem)])
