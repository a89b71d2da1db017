"""Content embeddings of items upserted while serving (not in the bundle), for the ranker.

The standalone ranking service reads them from the feature store's overlay hash in Redis
(services/feature_store/store.py `put_item`; layout in docs/feature_store.md): one HMGET for
just the ids a request needs, no cache, so a re-upserted item is scored on its newest content.
An entry without an embedding (or a deleted item) gives nothing, and the scorer falls back to
the unknown-item embedding with a zero content row. In one process the gateway passes the
retrieval service's in-memory lookup instead.
"""

from __future__ import annotations

import numpy as np

from services.feature_store.codec import unpack_overlay
from services.feature_store.keys import Keys
from shared.redis_conn import AsyncRedis, make_redis
from shared.settings import Settings


class RedisOverlayContent:
    def __init__(self, redis: AsyncRedis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisOverlayContent:
        return cls(make_redis(settings), Keys(settings.key_prefix, settings.events_stream))

    async def __call__(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        packed = await self.redis.hmget(self.keys.overlay, item_ids)
        found: dict[str, np.ndarray] = {}
        for item_id, raw in zip(item_ids, packed, strict=True):
            if raw is None:
                continue
            entry = unpack_overlay(raw)
            if entry.meta.available and entry.embedding:
                found[item_id] = np.asarray(entry.embedding, dtype=np.float32)
        return found

    async def aclose(self) -> None:
        await self.redis.aclose()
