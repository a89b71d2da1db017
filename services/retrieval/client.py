"""`RetrievalClient`: RetrievalAPI over HTTP, for a gateway that runs apart from retrieval.

The base client (shared/http_client.py) maps what the service answers back to the exceptions
the in-process RetrievalService raises, so callers handle both alike; retrieval adds:

    503 after an applied change whose metadata failed -> MetadataNotStored (a ServiceUnavailable)
    422 -> InvalidRequest (field from the error's `loc`)
    404 on delete/similar -> ItemNotFound
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

import httpx

from services.retrieval.errors import InvalidRequest, ItemNotFound, MetadataNotStored
from shared.admin import ReloadResponse
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
from shared.http_client import ErrorFactory, Failed, ServiceClient

RELOAD_TIMEOUT_S = 300.0


def _invalid(f: Failed) -> Exception | None:
    detail = f.detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(p) for p in detail[0].get("loc", []) if p not in ("body", "path")]
        return InvalidRequest(".".join(loc) or "body", str(detail[0].get("msg", detail)))
    return None


def _not_found(f: Failed) -> Exception | None:
    item_id = f.context.get("item_id")
    return ItemNotFound(item_id) if item_id is not None else None


def _unavailable(f: Failed) -> Exception | None:
    return MetadataNotStored(f"{f.where}: {f.detail}") if f.body.get("applied") else None


class RetrievalClient(ServiceClient):
    SERVICE = "retrieval"
    STATUS_ERRORS: ClassVar[dict[int, ErrorFactory]] = {
        404: _not_found, 422: _invalid, 503: _unavailable}

    def __init__(self, base_url: str, timeout_s: float, admin_token: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, timeout_s, admin_token=admin_token, transport=transport)
        self.last_bundle: str | None = None  # version that answered the latest retrieve

    async def retrieve(self, queries: list[RetrievalQuery],
                       bundle: str | None = None) -> list[RetrievalResult]:
        response = await self.send("POST", "/v1/retrieve",
                                   body=RetrieveRequest(queries=queries, bundle=bundle))
        answer = self.parse(RetrieveResponse, response)
        if len(answer.results) != len(queries):
            raise ServiceUnavailable(f"{self.where}: {len(answer.results)} results for "
                                     f"{len(queries)} queries")
        self.last_bundle = answer.bundle
        return answer.results

    async def similar(self, item_id: str, k: int) -> list[Neighbour]:
        response = await self.send("GET", f"/v1/items/{_quote(item_id)}/similar",
                                   params={"k": k}, context={"item_id": item_id})
        return self.parse(SimilarResponse, response).items

    async def upsert_item(self, item_id: str, item: ItemUpsert) -> ItemMeta:
        response = await self.send("PUT", f"/v1/items/{_quote(item_id)}", body=item, admin=True)
        return self.parse(ItemMeta, response)

    async def delete_item(self, item_id: str) -> None:
        await self.send("DELETE", f"/v1/items/{_quote(item_id)}", admin=True,
                        context={"item_id": item_id})

    async def reload(self, version: str | None = None) -> str:
        # loading a whole bundle takes far longer than a request: its own time limit
        response = await self.send("POST", "/admin/reload", json={"bundle": version},
                                   admin=True, timeout=RELOAD_TIMEOUT_S)
        return self.parse(ReloadResponse, response).bundle


def _quote(item_id: str) -> str:
    return quote(item_id, safe="")
