"""The feature store on a real 3-master Redis Cluster of local redis-server processes."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from services.feature_store.errors import UnknownItems
from services.feature_store.keys import Keys
from services.feature_store.loader import load_bundle
from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta
from shared.redis_conn import is_cluster, make_redis
from shared.settings import Settings

from .conftest import RedisServer, streamed

pytestmark = pytest.mark.anyio


@pytest.fixture
def cluster_settings(redis_cluster: list[RedisServer]) -> Settings:
    seed = redis_cluster[1]  # any node is a seed
    return Settings(redis_url=f"redis://127.0.0.1:{seed.port}/0?cluster=true",
                    key_prefix=f"vidrec:test:{uuid.uuid4().hex[:12]}", history_cap=4)


def ev(n: str, user: str, item: str, type_: str = "view") -> Event:
    return Event(event_id=n, user_id=user, item_id=item, type=type_,  # type: ignore[arg-type]
                 timestamp=time.time(), watch_fraction=1.0)


def keys_per_node(servers: list[RedisServer], prefix: str) -> list[int]:
    counts = []
    for s in servers:
        node = redis.Redis(port=s.port, decode_responses=True)
        counts.append(sum(1 for _ in node.scan_iter(match=f"{prefix}:*")))
        node.close()
    return counts


async def test_store_works_across_the_cluster(redis_cluster: list[RedisServer],
                                              cluster_settings: Settings) -> None:
    client = make_redis(cluster_settings)
    assert is_cluster(client)
    store = FeatureStore(client, cluster_settings)
    try:
        items = [f"v{i}" for i in range(40)]  # every bucket, so every node
        for i, item in enumerate(items):
            await store.put_item(ItemMeta(item_id=item, title=item.upper(), tags=[f"t{i % 4}"]))
        users = [f"user-{u}" for u in range(12)]
        batch = [ev(f"{u}-{n}", u, items[(n * 7 + j) % 40])
                 for j, u in enumerate(users) for n in range(6)]
        out = await store.record_events(batch)
        assert {o.status for o in out} == {"accepted"}
        again = await store.record_events(batch)
        assert {o.status for o in again} == {"duplicate"}
        # appended by the caller (the stream has its own slot): one entry, each event once
        ((_, fields),) = await store.redis.xrange(store.keys.events)
        assert "once" not in fields  # the archiver checks each event
        assert sorted(e["event_id"] for e in await streamed(store.redis, store.keys.events)) \
            == sorted(e.event_id for e in batch)

        for j, u in enumerate(users):
            state = await store.hydrate(u, 50)
            expected = [items[(n * 7 + j) % 40] for n in range(6)]
            assert state.known and state.history == expected[-4:]  # history_cap=4
            assert sorted(state.seen) == sorted(set(expected))
            assert sum(state.tag_profile.values()) == pytest.approx(6.0, rel=1e-6)
            assert [e.item_id for e in await store.history(u, 2)] == expected[-2:]

        meta = await store.item_meta(list(reversed(items)) + ["missing"])
        assert list(meta) == list(reversed(items))
        assert meta["v3"].title == "V3"

        with pytest.raises(UnknownItems) as info:
            await store.record_events([ev("x1", "user-0", "v1"), ev("x2", "user-0", "nope")])
        assert info.value.bad == [(1, "nope")]
        assert (await store.hydrate("nobody", 5)).known is False
        assert await store.ready() is True

        assert await store.delete_item("v5") is True
        assert (await store.item_meta(["v5"]))["v5"].available is False
        assert [o.meta.item_id for o in await store.overlay_items()][-1] == "v5"
    finally:
        await store.aclose()

    counts = keys_per_node(redis_cluster, cluster_settings.key_prefix)
    assert sum(1 for c in counts if c) == 3, counts  # the data really is spread

    keys = Keys(cluster_settings.key_prefix)
    sync = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port, decode_responses=True)
    try:
        # one user's keys sit together on one node
        slots = {sync.keyslot(k) for k in keys.user_keys("user-3")}
        assert len(slots) == 1
        per_node = keys_per_node(redis_cluster, keys.user_tag("user-3"))
        assert sorted(per_node) == [0, 0, 4 + 6]  # hist seen tags tagref + 6 dedupe markers
        for key in sync.scan_iter(match=f"{cluster_settings.key_prefix}:*"):
            sync.delete(key)
    finally:
        sync.close()


async def test_load_bundle_into_the_cluster(redis_cluster: list[RedisServer],
                                            cluster_settings: Settings,
                                            small_bundle: Path) -> None:
    users = json.loads((small_bundle / "users.json").read_text())
    stats = load_bundle(cluster_settings, str(small_bundle), progress=False)
    assert stats.users == len(users)
    load_bundle(cluster_settings, str(small_bundle), progress=False)  # idempotent here too
    store = FeatureStore.from_settings(cluster_settings)
    try:
        for user_id, seq in list(users.items())[:30]:
            state = await store.hydrate(user_id, 50)
            assert state.history == seq[-cluster_settings.history_cap:]
            assert sorted(state.seen) == sorted(set(seq))
        first = json.loads((small_bundle / "items.json").read_text())[:100]
        meta = await store.item_meta([it["item_id"] for it in first])
        assert [m.title for m in meta.values()] == [it["title"] for it in first]
    finally:
        await store.aclose()
    sync = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port, decode_responses=True)
    try:
        for key in sync.scan_iter(match=f"{cluster_settings.key_prefix}:*", count=1000):
            sync.delete(key)
    finally:
        sync.close()
