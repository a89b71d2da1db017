"""FeatureStore reads and item writes against the real Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta
from shared.redis_conn import make_redis
from shared.settings import Settings

pytestmark = pytest.mark.anyio


class WireLog(redis.asyncio.Connection):
    """A real connection that logs each socket write ("send") and each reply ("read")."""

    log: list[str] = []

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        WireLog.log.append("send")
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args, **kwargs):
        WireLog.log.append("read")
        return await super().read_response(*args, **kwargs)


def round_trips(log: list[str]) -> int:
    """Each write that follows a read (or starts the log) begins a new round trip."""
    return sum(1 for i, ev in enumerate(log) if ev == "send" and (i == 0 or log[i - 1] == "read"))


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[FeatureStore]:
    s = FeatureStore(make_redis(settings), settings)
    yield s
    await s.aclose()


async def put_items(store: FeatureStore, n: int) -> list[str]:
    for i in range(n):
        await store.put_item(ItemMeta(item_id=f"v{i}", title=f"Video {i}", tags=[f"t{i % 3}"]))
    return [f"v{i}" for i in range(n)]


def view(user: str, item: str, n: int, t: float | None = None) -> Event:
    return Event(event_id=f"{user}-{n}", user_id=user, item_id=item, type="view",
                 timestamp=t or time.time(), watch_fraction=0.5)


async def test_hydrate_is_one_round_trip_of_four_commands(settings: Settings) -> None:
    r = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True,
                                     connection_class=WireLog)
    store = FeatureStore(r, settings)
    try:
        items = await put_items(store, 5)
        await store.record_events([view("u1", i, n) for n, i in enumerate(items)])
        await r.ping()  # the connection exists and said hello
        WireLog.log = []
        state = await store.hydrate("u1", 3)
        log = list(WireLog.log)
    finally:
        await store.aclose()
    assert state.known and state.history == ["v2", "v3", "v4"]
    assert round_trips(log) == 1, log
    assert log.count("read") == 4, log


async def test_hydrate_of_a_user_with_nothing_stored(store: FeatureStore) -> None:
    state = await store.hydrate("nobody", 50)
    assert state.model_dump() == {"user_id": "nobody", "known": False, "history": [],
                                  "tag_profile": {}, "seen": []}


async def test_hydrate_returns_newest_last_and_history_len_zero(store: FeatureStore) -> None:
    items = await put_items(store, 4)
    await store.record_events([view("u", i, n) for n, i in enumerate(items)])
    state = await store.hydrate("u", 50)
    assert state.history == items
    assert sorted(state.seen) == items
    assert set(state.tag_profile) == {"t0", "t1", "t2"}
    assert (await store.hydrate("u", 0)).history == []  # not the whole list (LRANGE -0 -1)


async def test_history_is_capped(settings: Settings) -> None:
    settings = settings.model_copy(update={"history_cap": 3})
    store = FeatureStore(make_redis(settings), settings)
    try:
        items = await put_items(store, 7)
        await store.record_events([view("u", i, n) for n, i in enumerate(items)])
        await store.record_events([view("u", "v0", 99)])  # one more in a later batch
        assert (await store.hydrate("u", 50)).history == ["v5", "v6", "v0"]
        assert await store.redis.llen(store.keys.hist("u")) == 3
        assert len((await store.hydrate("u", 50)).seen) == 7  # seen is not capped
    finally:
        await store.aclose()


async def test_history_entries_keep_type_and_time(store: FeatureStore) -> None:
    await put_items(store, 2)
    await store.record_events([
        Event(event_id="a", user_id="u", item_id="v0", type="like", timestamp=1_700_000_000.25),
        Event(event_id="b", user_id="u", item_id="v1", type="skip", timestamp=1_700_000_001.0),
        Event(event_id="c", user_id="u", item_id="v1", type="complete",
              timestamp=1_700_000_002.5, watch_fraction=1.0)])
    entries = await store.history("u", 10)
    assert [(e.item_id, e.type, e.timestamp) for e in entries] == [
        ("v0", "like", 1_700_000_000.25), ("v1", "complete", 1_700_000_002.5)]
    assert [e.item_id for e in await store.history("u", 1)] == ["v1"]
    assert await store.history("nobody", 10) == []


async def test_item_meta_skips_unknown_ids_and_dedupes(store: FeatureStore) -> None:
    items = await put_items(store, 40)  # spread over many buckets
    meta = await store.item_meta([*items, "missing", "v3", "v3"])
    assert list(meta) == items
    assert meta["v3"] == ItemMeta(item_id="v3", title="Video 3", tags=["t0"], available=True)
    assert await store.item_meta([]) == {}


async def test_item_ids_with_separator_characters_round_trip(store: FeatureStore) -> None:
    odd = "a|b}{c d/é"
    await store.put_item(ItemMeta(item_id=odd, title="odd", tags=["x"]))
    await store.record_events([view("u|{1}", odd, 1)])
    assert (await store.hydrate("u|{1}", 5)).history == [odd]
    assert (await store.history("u|{1}", 5))[0].item_id == odd
    assert odd in await store.item_meta([odd])


async def test_put_and_delete_item_fill_the_overlay(store: FeatureStore) -> None:
    t = [1000.0]
    store.clock = lambda: t[0]
    await store.put_item(ItemMeta(item_id="new", title="New", tags=["x"]), [0.25, -1.5])
    t[0] = 1001.0
    await store.put_item(ItemMeta(item_id="old", title="Old", tags=["y"]))
    t[0] = 1002.0
    assert await store.delete_item("new") is True
    t[0] = 1003.0
    assert await store.delete_item("never-seen") is False

    meta = await store.item_meta(["new", "old", "never-seen"])
    assert meta["new"].available is False and meta["new"].title == "New"
    assert meta["old"].available is True
    assert "never-seen" not in meta  # a tombstone does not invent meta

    overlay = await store.overlay_items()
    assert [(o.meta.item_id, o.meta.available, o.updated_at) for o in overlay] == [
        ("old", True, 1001.0), ("new", False, 1002.0), ("never-seen", False, 1003.0)]
    assert overlay[1].embedding is None  # deleted: nothing to index


async def test_overlay_keeps_the_embedding_exactly(store: FeatureStore) -> None:
    emb = [0.1, -0.2, 3.0e-8, 12345.678]
    await store.put_item(ItemMeta(item_id="n", title="N"), emb)
    (entry,) = await store.overlay_items()
    assert entry.embedding == emb and entry.meta.title == "N"


async def test_ready_pings_redis(store: FeatureStore) -> None:
    assert await store.ready() is True
