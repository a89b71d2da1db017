"""A dependency that is down degrades the answer and says so; it never fails a request for
recommendations, and never makes the API drop an event. One process, real HTTP; each failure is
real: a Redis URL with nothing listening, HTTP clients pointed at a port with no service."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from services.feature_store.store import FeatureStore
from services.gateway.app import create_app
from services.ranking.client import RankingClient
from services.retrieval.client import RetrievalClient
from shared.bundle import Bundle
from shared.settings import Settings


@pytest.fixture(scope="module")
def user(bundle: Bundle) -> str:
    seqs = bundle.users()
    return max(seqs, key=lambda u: (len(seqs[u]), u))


def recs(base: str, user: str, **params) -> dict:
    r = httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": 10, **params},
                  timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def redis_down(gw_settings: Settings, serve_app, dead_url) -> Iterator[str]:
    dead = gw_settings.model_copy(update={"redis_url": dead_url("redis") + "/0"})
    with serve_app(create_app(gw_settings, feature_store=FeatureStore.from_settings(dead))) as b:
        yield b


def test_redis_down_answers_as_cold_start_and_flags_hydrate(redis_down: str, user: str) -> None:
    body = recs(redis_down, user)
    assert "hydrate" in body["degraded"]
    assert "items" in body["degraded"]  # titles came from the bundle instead
    assert len(body["items"]) == 10
    assert all(it["title"] for it in body["items"])


def test_redis_down_events_are_503_never_200(redis_down: str, bundle: Bundle, user: str) -> None:
    r = httpx.post(f"{redis_down}/v1/events", json={
        "event_id": uuid.uuid4().hex, "user_id": user, "item_id": bundle.items[0]["item_id"],
        "type": "view", "timestamp": 1714564800})
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert httpx.get(f"{redis_down}/v1/users/{user}/history").status_code == 503
    ready = httpx.get(f"{redis_down}/readyz")
    assert ready.status_code == 503 and ready.json()["feature_store"] is False


def test_redis_down_items_come_from_the_bundle(redis_down: str, bundle: Bundle) -> None:
    it = bundle.items[2]
    r = httpx.get(f"{redis_down}/v1/items/{it['item_id']}")
    assert r.status_code == 200 and r.json()["title"] == it["title"]


def test_ranking_down_keeps_retrieval_order_and_flags_score(
        gw_settings: Settings, serve_app, dead_url, user: str, bundle: Bundle) -> None:
    app = create_app(gw_settings, ranking=RankingClient(dead_url(), timeout_s=2.0))
    with serve_app(app) as base:
        body = recs(base, user)
    assert body["degraded"] == ["score"]
    assert len(body["items"]) == 10
    assert not set(bundle.users()[user]) & {it["item_id"] for it in body["items"]}


def test_retrieval_down_answers_from_the_popular_list_and_flags_retrieve(
        gw_settings: Settings, serve_app, dead_url, user: str, bundle: Bundle) -> None:
    app = create_app(gw_settings, retrieval=RetrievalClient(dead_url(), timeout_s=2.0),
                     ranking=RankingClient(dead_url(), timeout_s=2.0))
    with serve_app(app) as base:
        body = recs(base, user)
        new_user = recs(base, f"new-{uuid.uuid4().hex}", k=5)
        popular = httpx.get(f"{base}/v1/popular", params={"k": 3})
    assert body["degraded"] == ["retrieve", "score"]
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 10
    assert not set(bundle.users()[user]) & set(ids), "the fallback proposed watched items"
    assert all("popular now" in it["reasons"] for it in body["items"])
    assert new_user["degraded"] == ["retrieve"]  # a new user has nothing for the ranker
    assert len(new_user["items"]) == 5
    most_popular = max(bundle.items, key=lambda i: i["popularity"])["item_id"]
    assert new_user["items"][0]["item_id"] == most_popular
    assert popular.status_code == 200 and len(popular.json()["items"]) == 3


def test_every_dependency_down_still_answers(gw_settings: Settings, serve_app, dead_url,
                                             user: str) -> None:
    dead = gw_settings.model_copy(update={"redis_url": dead_url("redis") + "/0"})
    app = create_app(gw_settings, feature_store=FeatureStore.from_settings(dead),
                     retrieval=RetrievalClient(dead_url(), timeout_s=2.0),
                     ranking=RankingClient(dead_url(), timeout_s=2.0))
    with serve_app(app) as base:
        body = recs(base, user)
    assert set(body["degraded"]) == {"hydrate", "retrieve", "items"}
    assert len(body["items"]) == 10

