"""The base of every service's HTTP client: one keep-alive connection pool, one way to send,
and one table that turns a status code into the exception the in-process service would raise,
so callers handle both topologies alike.

    refused / reset / timed out                 -> ServiceUnavailable
    5xx, and any status the table does not name -> ServiceUnavailable (message: status + detail)
    401 / 403                                   -> AdminRejected (a configuration error)
    409                                         -> BundleNotServed
    a subclass's STATUS_ERRORS                  -> what it says (e.g. 404 -> ItemNotFound)
    an answer that does not parse               -> ServiceUnavailable ("malformed answer")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.errors import AdminRejected, BundleNotServed, ServiceUnavailable

M = TypeVar("M")


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(model: type[M]) -> TypeAdapter[M]:
    # a TypeAdapter builds its validator once: kept per dataclass, as a model class keeps its own
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter


JSON_HEADERS = {"content-type": "application/json"}


class Failed:
    """What the status table's entries get: where, the status, the JSON body (or {}), the
    `detail` and the call's context (e.g. the item id the request was about)."""

    def __init__(self, where: str, response: httpx.Response, context: Mapping[str, Any]) -> None:
        self.where = where
        self.status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}
        self.detail: Any = self.body.get("detail", response.text)
        self.context = context

    @property
    def message(self) -> str:
        return f"{self.where}: HTTP {self.status} {str(self.detail)[:300]}"


# status -> exception (None: the entry does not apply, fall through to ServiceUnavailable)
ErrorFactory = Callable[[Failed], Exception | None]

BASE_STATUS_ERRORS: dict[int, ErrorFactory] = {
    401: lambda f: AdminRejected(401, f"{f.where}: {f.detail}"),
    403: lambda f: AdminRejected(403, f"{f.where}: {f.detail}"),
    409: lambda f: BundleNotServed(f.message),
}


class ServiceClient:
    """One service over HTTP. Subclasses set SERVICE (for messages) and may extend
    STATUS_ERRORS."""

    SERVICE: ClassVar[str] = "service"
    STATUS_ERRORS: ClassVar[dict[int, ErrorFactory]] = {}

    def __init__(self, base_url: str, timeout_s: float, *, admin_token: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 limits: httpx.Limits | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.where = f"{self.SERVICE} at {self.base_url}"
        self.admin_headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport,
            limits=limits or httpx.Limits(max_keepalive_connections=32, keepalive_expiry=30.0))
        self._table = {**BASE_STATUS_ERRORS, **self.STATUS_ERRORS}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ready(self) -> bool:
        try:
            response = await self._http.get("/readyz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def send(self, method: str, url: str, *, body: BaseModel | None = None,
                   admin: bool = False, context: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> httpx.Response:
        """Send; any status >= 400 raises what the table says."""
        headers = dict(kwargs.pop("headers", None) or {})
        if body is not None:
            kwargs["content"] = body.model_dump_json()
            headers.update(JSON_HEADERS)
        if admin:
            headers.update(self.admin_headers)
        try:
            response = await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{self.where}: timed out ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{self.where}: {exc!r}") from exc
        if response.status_code < 400:
            return response
        failed = Failed(self.where, response, context or {})
        factory = self._table.get(response.status_code)
        error = factory(failed) if factory is not None else None
        raise error if error is not None else ServiceUnavailable(failed.message)

    def parse(self, model: type[M], response: httpx.Response) -> M:
        """The answer as `model`: a pydantic model, or a dataclass of shared/contracts.py."""
        try:
            if issubclass(model, BaseModel):
                return model.model_validate_json(response.content)
            return _adapter(model).validate_json(response.content)
        except ValidationError as exc:
            raise ServiceUnavailable(f"{self.where}: malformed answer") from exc
