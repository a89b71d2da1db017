"""FeatureStoreAPI over HTTP, for a gateway that runs apart from the feature store.

Errors are the same as in-process (FeatureStore), so callers need not know the topology:
    connection refused / timeout / 5xx  -> shared.contracts.ServiceUnavailable
    422 for unknown item ids            -> services.feature_store.errors.UnknownItems
    any other 4xx                       -> httpx.HTTPStatusError (a bug in the caller)
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from services.feature_store.errors import UnknownItems
from shared.contracts import (
    Event,
    EventBatch,
    EventBatchResult,
    EventOutcome,
    HistoryEntry,
    HistoryResponse,
    HydrateRequest,
    ItemMeta,
    ItemMetaRequest,
    ItemMetaResponse,
    ServiceUnavailable,
    UserState,
)
from shared.http_client import is_ready, request

M = TypeVar("M", bound=BaseModel)


class FeatureStoreClient:
    def __init__(self, base_url: str, timeout_s: float = 1.0, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        # one client for the process: keep-alive connections are reused across requests
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, model: type[M], *,
                    body: BaseModel | None = None, params: dict | None = None) -> M:
        resp = await request(
            self._http, method, path, f"feature store {path}", params=params,
            content=None if body is None else body.model_dump_json(),
            headers=None if body is None else {"content-type": "application/json"})
        if resp.status_code >= 500:
            raise ServiceUnavailable(f"feature store {path}: HTTP {resp.status_code}")
        if resp.status_code == 422:
            unknown = UnknownItems.from_detail(resp.json().get("detail"))
            if unknown is not None:
                raise unknown
        resp.raise_for_status()
        return model.model_validate_json(resp.content)

    async def hydrate(self, user_id: str, history_len: int) -> UserState:
        return await self._call("POST", "/v1/hydrate", UserState,
                                body=HydrateRequest(user_id=user_id, history_len=history_len))

    async def item_meta(self, item_ids: list[str]) -> dict[str, ItemMeta]:
        if not item_ids:
            return {}
        resp = await self._call("POST", "/v1/items/meta", ItemMetaResponse,
                                body=ItemMetaRequest(item_ids=item_ids))
        return resp.items

    async def record_events(self, events: list[Event]) -> list[EventOutcome]:
        resp = await self._call("POST", "/v1/events", EventBatchResult,
                                body=EventBatch(events=events))
        return resp.results

    async def history(self, user_id: str, limit: int) -> list[HistoryEntry]:
        resp = await self._call("GET", f"/v1/users/{quote(user_id, safe='')}/history",
                                HistoryResponse, params={"limit": limit})
        return resp.items

    async def ready(self) -> bool:
        return await is_ready(self._http)
