"""record_events: idempotent on event_id, validated before writing, streamed, never dropped."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ResponseError

from services.feature_store.errors import UnknownItems
from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta
from shared.redis_conn import make_redis
from shared.settings import Settings

from .conftest import streamed

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[FeatureStore]:
    s = FeatureStore(make_redis(settings), settings)
    for i in range(3):
        await s.put_item(ItemMeta(item_id=f"v{i}", title=f"V{i}", tags=[f"t{i}", "all"]))
    yield s
    await s.aclose()


def ev(event_id: str, item: str = "v0", type_: str = "view", user: str = "u",
       t: float | None = None) -> Event:
    return Event(event_id=event_id, user_id=user, item_id=item, type=type_,  # type: ignore[arg-type]
                 timestamp=t if t is not None else time.time() - 60, watch_fraction=0.8)


async def snapshot(store: FeatureStore) -> dict[str, object]:
    """Every key under the test's prefix with its DUMP (type, value) and the stream length."""
    keys = sorted(await store.redis.keys(f"{store.settings.key_prefix}:*"))
    out: dict[str, object] = {}
    for k in keys:
        if k == store.keys.events:
            out[k] = ("stream", await store.redis.xlen(k))
        else:
            out[k] = (await store.redis.type(k), await store.redis.dump(k))
    return out


async def test_replaying_a_batch_changes_nothing(store: FeatureStore) -> None:
    batch = [ev("e1", "v0", "view"), ev("e2", "v1", "like"), ev("e3", "v2", "complete"),
             ev("e4", "v1", "skip"), ev("e5", "v0", "view", user="other"),
             ev("e6", "v2", "dislike")]
    first = await store.record_events(batch)
    assert [o.status for o in first] == ["accepted"] * 6
    before = await snapshot(store)
    again = await store.record_events(batch)
    assert [(o.event_id, o.status) for o in again] == [(e.event_id, "duplicate") for e in batch]
    assert await snapshot(store) == before
    # one stream entry for the batch, none for the replay
    assert await store.redis.xlen(store.keys.events) == 1
    assert [e["event_id"] for e in await streamed(store.redis, store.keys.events)] == [
        e.event_id for e in batch]


async def test_same_event_twice_in_one_batch_counts_once(store: FeatureStore) -> None:
    out = await store.record_events([ev("e1"), ev("e1"), ev("e2", "v1")])
    assert [o.status for o in out] == ["accepted", "duplicate", "accepted"]
    assert (await store.hydrate("u", 10)).history == ["v0", "v1"]
    assert [e["event_id"] for e in await streamed(store.redis, store.keys.events)] == [
        "e1", "e2"]


async def test_event_ids_are_scoped_to_their_user(store: FeatureStore) -> None:
    out = await store.record_events([ev("same", user="a"), ev("same", user="b")])
    assert [o.status for o in out] == ["accepted", "accepted"]


async def test_unknown_items_raise_with_indexes_before_any_write(store: FeatureStore) -> None:
    before = await snapshot(store)
    with pytest.raises(UnknownItems) as info:
        await store.record_events([ev("e1", "v0"), ev("e2", "nope"), ev("e3", "v1"),
                                   ev("e4", "gone")])
    assert info.value.bad == [(1, "nope"), (3, "gone")]
    assert info.value.fields == ["events[1].item_id", "events[3].item_id"]
    assert await snapshot(store) == before  # not even the valid events were written


async def test_stream_entry_carries_the_whole_batch(store: FeatureStore) -> None:
    e = Event(event_id="e1", user_id="u", item_id="v1", type="complete",
              timestamp=1_700_000_000.5, watch_fraction=1.0)
    f = Event(event_id="e2", user_id="w", item_id="v0", type="view", timestamp=1_700_000_001,
              request_id="r-1", position=3)
    await store.record_events([e, f])
    ((_, fields),) = await store.redis.xrange(store.keys.events)
    # written by the script that marked both "done": no other entry holds them
    assert fields["once"] == "1" and "skip" not in fields and "replayed" not in fields
    assert orjson.loads(fields["events"]) == {
        "event_id": ["e1", "e2"], "user_id": ["u", "w"], "item_id": ["v1", "v0"],
        "type": ["complete", "view"], "timestamp": [1_700_000_000.5, 1_700_000_001.0],
        "watch_fraction": [1.0, 0.0], "request_id": [None, "r-1"], "position": [None, 3]}
    assert await store.redis.get(store.keys.dedupe("u", "e1")) == "done"


async def test_a_partly_replayed_batch_skips_what_the_stream_holds(store: FeatureStore) -> None:
    await store.record_events([ev("e1", "v0")])
    out = await store.record_events([ev("e1", "v0"), ev("e2", "v1")])
    assert [o.status for o in out] == ["duplicate", "accepted"]
    (_, first), (_, second) = await store.redis.xrange(store.keys.events)
    assert second["skip"] == "0"  # e1: in the first entry already
    assert [e["event_id"] for e in await streamed(store.redis, store.keys.events)] == [
        "e1", "e2"]


async def test_a_skip_is_seen_but_neither_history_nor_taste(store: FeatureStore) -> None:
    await store.record_events([ev("s", "v2", "skip")])
    state = await store.hydrate("u", 10)
    assert state.known and state.history == [] and state.tag_profile == {}
    assert state.seen == ["v2"]
    assert await store.redis.xlen(store.keys.events) == 1  # still streamed for retraining


async def test_a_dislike_is_seen_pushes_taste_down_and_stays_out_of_history(
        store: FeatureStore) -> None:
    await store.record_events([ev("l", "v0", "like"), ev("d", "v1", "dislike")])
    state = await store.hydrate("u", 10)
    assert state.history == ["v0"]  # the ranker's input holds positive interactions only
    assert sorted(state.seen) == ["v0", "v1"]  # never recommended again
    assert state.tag_profile["t0"] > 0 > state.tag_profile["t1"]
    assert state.tag_profile["all"] == pytest.approx(0.0, abs=1e-3)  # +2 like, -2 dislike
    assert [e["type"] for e in await streamed(store.redis, store.keys.events)] == [
        "like", "dislike"]  # streamed for retraining
    again = await store.record_events([ev("d", "v1", "dislike")])
    assert again[0].status == "duplicate"  # idempotent like every event type
    assert (await store.hydrate("u", 10)).tag_profile["t1"] == pytest.approx(
        state.tag_profile["t1"], rel=1e-6)  # decayed a little more, not applied twice


async def test_events_on_a_deleted_item_are_accepted(store: FeatureStore) -> None:
    await store.delete_item("v1")
    assert [o.status for o in await store.record_events([ev("late", "v1")])] == ["accepted"]


async def test_a_failed_stream_append_is_retried_not_lost(store: FeatureStore) -> None:
    # Make XADD fail for real: the stream key holds a string (WRONGTYPE).
    await store.redis.set(store.keys.events, "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.record_events([ev("e1", "v0"), ev("e2", "v1")])
    # the state was applied once, the markers wait for the stream
    assert (await store.hydrate("u", 10)).history == ["v0", "v1"]
    assert await store.redis.get(store.keys.dedupe("u", "e1")) == "pending"

    await store.redis.delete(store.keys.events)  # the stream works again; the client retries
    out = await store.record_events([ev("e1", "v0"), ev("e2", "v1")])
    assert [o.status for o in out] == ["duplicate", "duplicate"]  # state not applied twice
    assert (await store.hydrate("u", 10)).history == ["v0", "v1"]
    ((_, fields),) = await store.redis.xrange(store.keys.events)
    assert [e["event_id"] for e in await streamed(store.redis, store.keys.events)] == [
        "e1", "e2"]  # and now streamed
    # retries of "pending" events: the archiver checks each against older entries
    assert fields["replayed"] == "0,1"
    assert await store.redis.get(store.keys.dedupe("u", "e1")) == "done"
    await store.record_events([ev("e1", "v0")])
    assert await store.redis.xlen(store.keys.events) == 1  # done: no second append


async def test_script_is_reloaded_after_script_flush(store: FeatureStore) -> None:
    await store.record_events([ev("e1")])
    await store.redis.script_flush()  # e.g. a Redis restart without persistence
    assert [o.status for o in await store.record_events([ev("e2", "v1")])] == ["accepted"]


async def test_stream_is_trimmed_approximately(settings: Settings) -> None:
    settings = settings.model_copy(update={"events_stream_maxlen": 10})
    store = FeatureStore(make_redis(settings), settings)
    try:
        await store.put_item(ItemMeta(item_id="v", title="V"))
        for b in range(10):
            await store.record_events([ev(f"e{b}-{i}", "v") for i in range(100)])
        # MAXLEN ~ trims whole macro nodes (100 entries each by default), never below 10
        assert 10 <= await store.redis.xlen(store.keys.events) <= 200
    finally:
        await store.aclose()


async def test_outcomes_are_counted_on_metrics(store: FeatureStore) -> None:
    def count(status: str) -> float:
        return REGISTRY.get_sample_value(
            "vidrec_events_total", {"type": "like", "status": status}) or 0.0

    before = {s: count(s) for s in ("accepted", "duplicate", "unknown_item")}
    await store.record_events([ev("m1", "v0", "like"), ev("m1", "v0", "like")])
    with pytest.raises(UnknownItems):
        await store.record_events([ev("m2", "nope", "like")])
    assert {s: count(s) - before[s] for s in before} == {
        "accepted": 1, "duplicate": 1, "unknown_item": 1}
