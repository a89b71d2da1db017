"""`RetrievalClient`: RetrievalAPI over HTTP, for a gateway that runs apart from retrieval.

One keep-alive `httpx.AsyncClient` is shared by every call. What the service answers maps back to
the exceptions the in-process RetrievalService raises, so callers handle both alike:

    refused / reset / timed out / 5xx / malformed answer  -> ServiceUnavailable
        (503 after an applied change whose metadata failed -> MetadataNotStored, a subclass)
    422 -> InvalidRequest (field from the error's `loc`)    404 on delete/similar -> ItemNotFound
    401 / 403 -> AdminRejected                               other 4xx -> ServiceUnavailable
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from pydantic import ValidationError

from services.retrieval.errors import (
    AdminRejected,
    InvalidRequest,
    ItemNotFound,
    MetadataNotStored,
)
from shared.contracts import (
    ItemMeta,
    ItemUpsert,
    Neighbour,
    RetrievalQuery,
    RetrievalResult,
    RetrieveRequest,
    RetrieveResponse,
    ServiceUnavailable,
    SimilarResponse,
)
from shared.http_client import is_ready, request

JSON = {"content-type": "application/json"}


class RetrievalClient:
    def __init__(self, base_url: str, timeout_s: float, admin_token: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._admin = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport,
            limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=30.0))
        self.last_bundle: str | None = None  # version that answered the latest retrieve

    async def aclose(self) -> None:
        await self._http.aclose()

    async def retrieve(self, queries: list[RetrievalQuery],
                       bundle: str | None = None) -> list[RetrievalResult]:
        body = RetrieveRequest(queries=queries, bundle=bundle).model_dump_json()
        response = await self._send("POST", "/v1/retrieve", content=body, headers=JSON)
        answer = self._parse(RetrieveResponse, response)
        if len(answer.results) != len(queries):
            raise ServiceUnavailable(f"retrieval at {self.base_url}: {len(answer.results)} "
                                     f"results for {len(queries)} queries")
        self.last_bundle = answer.bundle
        return answer.results

    async def similar(self, item_id: str, k: int) -> list[Neighbour]:
        response = await self._send("GET", f"/v1/items/{_quote(item_id)}/similar",
                                    params={"k": k}, item_id=item_id)
        return self._parse(SimilarResponse, response).items

    async def upsert_item(self, item_id: str, item: ItemUpsert) -> ItemMeta:
        response = await self._send("PUT", f"/v1/items/{_quote(item_id)}",
                                    content=item.model_dump_json(), headers=JSON | self._admin)
        return self._parse(ItemMeta, response)

    async def delete_item(self, item_id: str) -> None:
        await self._send("DELETE", f"/v1/items/{_quote(item_id)}", headers=self._admin,
                         item_id=item_id)

    async def reload(self, version: str | None = None) -> str:
        response = await self._send("POST", "/admin/reload", json={"bundle": version},
                                    headers=self._admin)
        return str(response.json()["bundle"])

    async def ready(self) -> bool:
        return await is_ready(self._http)

    # ---- plumbing -----------------------------------------------------------------------
    async def _send(self, method: str, url: str, item_id: str | None = None,
                    **kwargs) -> httpx.Response:
        where = f"retrieval at {self.base_url}"
        response = await request(self._http, method, url, where, **kwargs)
        code = response.status_code
        if code < 400:
            return response
        body = _body(response)
        detail = body.get("detail", response.text)
        if code == 503 and body.get("applied"):
            raise MetadataNotStored(f"{where}: {detail}")
        if code >= 500:
            raise ServiceUnavailable(f"{where}: HTTP {code} {str(detail)[:300]}")
        if code in (401, 403):
            raise AdminRejected(code, f"{where}: {detail}")
        if code == 404 and item_id is not None:
            raise ItemNotFound(item_id)
        if code == 422 and isinstance(detail, list) and detail and isinstance(detail[0], dict):
            loc = [str(p) for p in detail[0].get("loc", []) if p not in ("body", "path")]
            raise InvalidRequest(".".join(loc) or "body", str(detail[0].get("msg", detail)))
        raise ServiceUnavailable(f"{where}: HTTP {code} {str(detail)[:300]}")

    def _parse(self, model, response: httpx.Response):
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServiceUnavailable(f"retrieval at {self.base_url}: malformed answer") from exc


def _body(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _quote(item_id: str) -> str:
    return quote(item_id, safe="")
