"""FeatureStoreAPI over HTTP, for a gateway that runs apart from the feature store.

Errors are the same as in-process (FeatureStore), so callers need not know the topology:
    connection refused / timeout / 5xx  -> ServiceUnavailable (shared/http_client.py)
    422 for unknown item ids            -> services.feature_store.errors.UnknownItems
    401 / 403                           -> AdminRejected
    any other 4xx                       -> ServiceUnavailable naming the status
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar
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
    UserState,
)
from shared.http_client import ErrorFactory, Failed, ServiceClient

M = TypeVar("M", bound=BaseModel)


def _unknown_items(f: Failed) -> Exception | None:
    return UnknownItems.from_detail(f.detail)


class FeatureStoreClient(ServiceClient):
    SERVICE = "feature store"
    STATUS_ERRORS: ClassVar[dict[int, ErrorFactory]] = {422: _unknown_items}

    def __init__(self, base_url: str, timeout_s: float = 1.0, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, timeout_s, transport=transport,
                         limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))

    async def _call(self, method: str, path: str, model: type[M], *,
                    body: BaseModel | None = None, params: dict[str, Any] | None = None) -> M:
        response = await self.send(method, path, body=body, params=params)
        return self.parse(model, response)

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

