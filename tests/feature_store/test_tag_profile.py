"""Tag profile math: weights per event type, half-life decay, late events, rebasing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.feature_store.profile import (
    COMPLETE_WEIGHT,
    DISLIKE_WEIGHT,
    LIKE_WEIGHT,
    REBASE_HALF_LIVES,
    event_weight,
    import_profile,
)
from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta
from shared.redis_conn import make_redis
from shared.settings import Settings

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
HALF_LIFE_DAYS = 10.0
H = HALF_LIFE_DAYS * 86400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[FeatureStore]:
    settings = settings.model_copy(update={"tag_half_life_days": HALF_LIFE_DAYS})
    s = FeatureStore(make_redis(settings), settings, clock=Clock(T0))
    await s.put_item(ItemMeta(item_id="a", title="A", tags=["x", "y", "x"]))
    await s.put_item(ItemMeta(item_id="b", title="B", tags=["y"]))
    await s.put_item(ItemMeta(item_id="c", title="C", tags=["z"]))
    yield s
    await s.aclose()


def ev(n: str, item: str, t: float, type_: str = "like", wf: float = 0.0) -> Event:
    return Event(event_id=n, user_id="u", item_id=item, type=type_,  # type: ignore[arg-type]
                 timestamp=t, watch_fraction=wf)


async def profile_at(store: FeatureStore, now: float) -> dict[str, float]:
    store.clock.now = now  # type: ignore[attr-defined]
    return (await store.hydrate("u", 10)).tag_profile


def test_weights_by_type() -> None:
    assert event_weight("complete", 0.3) == COMPLETE_WEIGHT
    assert event_weight("like", 0.0) == LIKE_WEIGHT
    assert event_weight("view", 0.0) == 0.5
    assert event_weight("view", 1.0) == 1.0
    assert event_weight("skip", 1.0) == 0.0
    assert event_weight("dislike", 1.0) == DISLIKE_WEIGHT == -LIKE_WEIGHT
    assert COMPLETE_WEIGHT > LIKE_WEIGHT > event_weight("view", 1.0)


def test_import_profile_counts_each_interaction_once_per_tag() -> None:
    assert import_profile([["x", "y", "x"], ["y"], []]) == {"x": 1.0, "y": 2.0}


async def test_one_half_life_halves_a_weight(store: FeatureStore) -> None:
    await store.record_events([ev("1", "a", T0)])
    assert await profile_at(store, T0) == pytest.approx({"x": 2.0, "y": 2.0})
    assert await profile_at(store, T0 + H) == pytest.approx({"x": 1.0, "y": 1.0})
    assert await profile_at(store, T0 + 3 * H) == pytest.approx({"x": 0.25, "y": 0.25})


async def test_newer_events_add_at_full_worth(store: FeatureStore) -> None:
    store.clock.now = T0 + 2 * H  # type: ignore[attr-defined]
    await store.record_events([ev("1", "a", T0), ev("2", "b", T0 + H, "complete"),
                               ev("3", "c", T0 + 2 * H, "view", wf=0.5)])
    got = await profile_at(store, T0 + 2 * H)
    # a: like (2) two half-lives ago; b: complete (3) one ago; c: view 0.75 now
    assert got == pytest.approx({"x": 0.5, "y": 0.5 + 1.5, "z": 0.75})


async def test_a_late_event_counts_with_its_decayed_worth(store: FeatureStore) -> None:
    store.clock.now = T0 + H  # type: ignore[attr-defined]
    await store.record_events([ev("new", "b", T0 + H)])
    await store.record_events([ev("old", "c", T0)])  # arrives after, happened before
    assert await profile_at(store, T0 + H) == pytest.approx({"y": 2.0, "z": 1.0})


async def test_rebase_after_many_half_lives_keeps_the_math(store: FeatureStore) -> None:
    far = T0 + (REBASE_HALF_LIVES + 4) * H
    store.clock.now = far  # type: ignore[attr-defined]
    await store.record_events([ev("1", "a", T0), ev("2", "b", T0 + 10 * H)])
    await store.record_events([ev("3", "c", far)])  # past the rebase threshold
    assert float(await store.redis.get(store.keys.tagref("u"))) == far
    got = await profile_at(store, far)
    # x from T0 decayed 20 half-lives: 2 * 2^-20 ~ 1.9e-6 < prune threshold -> dropped
    assert "x" not in got
    n = REBASE_HALF_LIVES + 4
    assert got == pytest.approx({"y": 2.0 * 2 ** -(n - 10) + 2.0 * 2 ** -n, "z": 2.0},
                                rel=1e-12)


async def test_a_clock_from_the_future_decays_as_now(store: FeatureStore) -> None:
    await store.record_events([ev("future", "a", T0 + 100 * H)])  # clock says T0
    await store.record_events([ev("now", "c", T0)])
    assert await profile_at(store, T0) == pytest.approx({"x": 2.0, "y": 2.0, "z": 2.0})
    (entry, _) = await store.history("u", 10)
    assert entry.timestamp == T0 + 100 * H  # the event itself is kept as sent


async def test_skips_and_tagless_items_leave_the_profile_alone(store: FeatureStore) -> None:
    await store.put_item(ItemMeta(item_id="bare", title="no tags"))
    await store.record_events([ev("1", "a", T0, "skip"), ev("2", "bare", T0)])
    assert await profile_at(store, T0) == {}
    assert await store.redis.exists(store.keys.tagref("u")) == 0


async def test_a_dislike_pushes_its_tags_down_with_the_same_decay(store: FeatureStore) -> None:
    store.clock.now = T0 + H  # type: ignore[attr-defined]
    await store.record_events([ev("1", "b", T0 + H, "complete"), ev("2", "a", T0, "dislike")])
    # complete on b (y +3, now); dislike on a one half-life ago (x, y: -2 * 1/2)
    got = await profile_at(store, T0 + H)
    assert got == pytest.approx({"x": -1.0, "y": 2.0})
    assert await profile_at(store, T0 + 2 * H) == pytest.approx({"x": -0.5, "y": 1.0})


async def test_a_rebase_keeps_negative_weights_and_prunes_by_size(store: FeatureStore) -> None:
    far = T0 + (REBASE_HALF_LIVES + 4) * H
    store.clock.now = far  # type: ignore[attr-defined]
    await store.record_events([ev("0", "c", T0), ev("1", "a", T0 + 10 * H, "dislike")])
    await store.record_events([ev("2", "b", far)])  # past the rebase threshold
    assert float(await store.redis.get(store.keys.tagref("u"))) == far
    got = await profile_at(store, far)
    # z (like at T0) decayed 20 half-lives: below the threshold, dropped; x and y (dislike 10
    # half-lives ago) are small but not negligible: kept, and still negative for x
    n = REBASE_HALF_LIVES + 4 - 10
    assert got == pytest.approx({"x": -2.0 * 2 ** -n, "y": 2.0 - 2.0 * 2 ** -n}, rel=1e-12)


async def test_a_non_finite_time_decays_as_now(store: FeatureStore) -> None:
    await store.record_events([ev("inf", "a", float("inf"))])
    assert await profile_at(store, T0) == pytest.approx({"x": 2.0, "y": 2.0})


async def test_the_profile_counts_tag_clusters_once_per_event(store: FeatureStore) -> None:
    # `king glory` and `kingglory` are one cluster: one like adds LIKE_WEIGHT once
    await store.put_item(ItemMeta(item_id="k", title="K", tags=["king glory", "kingglory",
                                                                "funny"],
                                  clusters=["king glory", "funny"]))
    await store.put_item(ItemMeta(item_id="k2", title="K2", tags=["kinghonor"],
                                  clusters=["king glory"]))
    await store.record_events([ev("1", "k", T0), ev("2", "k2", T0)])
    profile = (await store.hydrate("u", 10)).tag_profile
    assert profile == pytest.approx({"king glory": 2 * LIKE_WEIGHT, "funny": LIKE_WEIGHT})
    meta = await store.item_meta(["k", "a"])
    assert meta["k"].clusters == ["king glory", "funny"]
    assert meta["a"].clusters == []  # stored without clusters: the profile counts its tags
