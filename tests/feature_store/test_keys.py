"""The key layout of docs/feature_store.md, pinned byte for byte."""

from __future__ import annotations

import time

import pytest
import redis
from redis.crc import key_slot

from services.feature_store.keys import ITEM_BUCKETS, Keys, item_bucket
from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta
from shared.redis_conn import make_redis
from shared.settings import Settings

pytestmark = pytest.mark.anyio


def test_user_keys_are_pinned() -> None:
    k = Keys("vidrec:v3")
    assert k.hist("42") == "vidrec:v3:{u:42}:hist"
    assert k.seen("42") == "vidrec:v3:{u:42}:seen"
    assert k.tags("42") == "vidrec:v3:{u:42}:tags"
    assert k.tagref("42") == "vidrec:v3:{u:42}:tagref"
    assert k.dedupe("42", "e-1") == "vidrec:v3:{u:42}:ev:e-1"


def test_the_default_prefix_is_the_v3_layout() -> None:
    # v2: tag profile fields and item meta carry tag clusters; v3: one events stream entry per
    # recorded batch (docs/feature_store.md)
    assert Settings().key_prefix == "vidrec:v3"


def test_item_and_global_keys_are_pinned() -> None:
    k = Keys("vidrec:v3", "events")
    assert ITEM_BUCKETS == 16
    assert k.item("v7") == "vidrec:v3:{i:00}:item:v7"
    assert k.item("42") == "vidrec:v3:{i:08}:item:42"
    assert k.item("b") == "vidrec:v3:{i:09}:item:b"
    assert k.overlay == "vidrec:v3:items:overlay"
    assert k.events == "vidrec:v3:events"
    assert k.loaded == "vidrec:v3:loaded"
    assert Keys("p:v2", "ev").events == "p:v2:ev"


@pytest.mark.parametrize("user_id", ["42", "a}b", "{x}", "x{", "ü/ :|", ""])
def test_one_users_keys_share_one_cluster_slot(user_id: str) -> None:
    k = Keys("vidrec:v3")
    slots = {key_slot(key.encode()) for key in [*k.user_keys(user_id), k.dedupe(user_id, "e")]}
    assert len(slots) == 1


def test_item_keys_spread_over_buckets_and_bucket_is_the_slot() -> None:
    k = Keys("vidrec:v3")
    ids = [str(i) for i in range(1000)]
    assert {item_bucket(i) for i in ids} == set(range(ITEM_BUCKETS))
    for i in ids[:50]:
        assert key_slot(k.item(i).encode()) == key_slot(f"{{i:{item_bucket(i):02d}}}".encode())


def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        Keys("vidrec:{v1}")


async def test_store_writes_exactly_the_documented_keys(settings: Settings) -> None:
    store = FeatureStore(make_redis(settings), settings)
    try:
        await store.put_item(ItemMeta(item_id="v7", title="Seven", tags=["cats"]), [0.5, 0.5])
        await store.record_events([Event(event_id="e-1", user_id="42", item_id="v7",
                                         type="like", timestamp=time.time())])
        keys = set(await store.redis.keys(f"{settings.key_prefix}:*"))
    finally:
        await store.aclose()
    p = settings.key_prefix
    assert keys == {f"{p}:{{i:00}}:item:v7", f"{p}:items:overlay", f"{p}:events",
                    f"{p}:{{u:42}}:hist", f"{p}:{{u:42}}:seen", f"{p}:{{u:42}}:tags",
                    f"{p}:{{u:42}}:tagref", f"{p}:{{u:42}}:ev:e-1"}
    raw = redis.Redis.from_url(settings.redis_url)
    try:
        assert raw.get(f"{p}:{{i:00}}:item:v7".encode()) == (
            b'{"title":"Seven","tags":["cats"],"available":true}')
        hist = raw.lrange(f"{p}:{{u:42}}:hist".encode(), 0, -1)
        assert len(hist) == 1 and hist[0].startswith(b"like|") and hist[0].endswith(b"|v7")
        assert raw.type(f"{p}:{{u:42}}:seen".encode()) == b"set"
        assert raw.type(f"{p}:{{u:42}}:tags".encode()) == b"hash"
        assert raw.type(f"{p}:events".encode()) == b"stream"
        ttl = raw.ttl(f"{p}:{{u:42}}:ev:e-1".encode())
        assert 0 < ttl <= settings.event_dedupe_ttl_s
        assert raw.ttl(f"{p}:{{u:42}}:hist".encode()) == -1  # user state never expires
    finally:
        raw.close()
