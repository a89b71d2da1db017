"""The public API in one process, over real HTTP: real bundle, real Redis, real FAISS and
onnxruntime (every part in-process, as `vidrec serve` runs them)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.feature_store.store import FeatureStore
from shared.bundle import Bundle
from shared.settings import Settings
from shared.tags import TagClusters
from tests.gateway.conftest import recs


def event(user: str, item: str, **over) -> dict:
    return {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": "complete",
            "timestamp": time.time(), "watch_fraction": 1.0, **over}


def hydrate(settings: Settings, user: str):
    async def go():
        store = FeatureStore.from_settings(settings)
        try:
            return await store.hydrate(user, settings.history_len)
        finally:
            await store.aclose()

    return asyncio.run(go())


# ---- recommendations ------------------------------------------------------------------------
def test_a_real_user_gets_a_ranked_explained_list(live: str, bundle: Bundle,
                                                   users: list[str]) -> None:
    user = users[len(users) // 2]
    body = recs(live, user, k=10)
    assert body["user_id"] == user
    assert body["degraded"] == []
    assert body["model_version"] == bundle.version
    items = body["items"]
    assert len(items) == 10
    assert len({i["item_id"] for i in items}) == 10
    watched = set(bundle.users()[user])
    assert not watched & {i["item_id"] for i in items}, "a watched item was recommended"
    titles = {it["item_id"]: it["title"] for it in bundle.items}
    for it in items:
        assert it["title"] == titles[it["item_id"]]
        assert it["reasons"] and all(isinstance(r, str) and r for r in it["reasons"])
        assert isinstance(it["score"], float)
    # ranked: scores never increase down the list, except where diversity held an item back
    assert items[0]["score"] == max(i["score"] for i in items)
    assert any(r.startswith("because you watched ") for it in items for r in it["reasons"])


def test_no_tag_dominates_a_short_list(live: str, users: list[str]) -> None:
    body = recs(live, users[-1], k=5)
    per_tag = Counter(t for it in body["items"] for t in it["tags"])
    assert len(body["items"]) == 5
    assert max(per_tag.values(), default=0) <= 3  # settings.max_per_tag


def test_a_history_unknown_to_retrieval_still_gets_a_full_list(gw_settings: Settings) -> None:
    """ANN has nothing to search with when no history item is in the catalogue: the retrieve
    stage then asks every source (real RetrievalService on the real bundle)."""
    from services.gateway.catalog import Catalog
    from services.gateway.pipeline import RecContext, RecRequest
    from services.gateway.pipeline.retrieve import Retrieve
    from services.retrieval.service import RetrievalService
    from shared.contracts import UserState

    async def go() -> RecContext:
        service = RetrievalService(gw_settings)
        await service.reload()
        ctx = RecContext(RecRequest("u", k=10), user_state=UserState(
            user_id="u", known=True, history=["gone-1", "gone-2"], seen=["gone-1", "gone-2"]))
        await Retrieve(service, gw_settings.candidate_caps, Catalog.empty()).run(ctx)
        return ctx

    ctx = asyncio.run(go())
    assert len(ctx.candidates) >= 10
    assert {c.source for c in ctx.candidates} >= {"popular"}


def test_an_unknown_user_gets_a_cold_start_list(live: str) -> None:
    body = recs(live, f"new-{uuid.uuid4().hex}", k=8)
    assert body["degraded"] == []
    assert len(body["items"]) == 8
    assert all("popular now" in it["reasons"] for it in body["items"])


def test_interests_steer_a_new_users_list(live: str, bundle: Bundle) -> None:
    tag = Counter(t for it in bundle.items for t in it["tags"]).most_common(3)[-1][0]
    body = recs(live, f"new-{uuid.uuid4().hex}", k=5, interests=f"#{tag.upper()}")
    assert len(body["items"]) == 5
    for it in body["items"]:
        assert tag in it["tags"]
        assert f"matches #{tag}" in it["reasons"]


def test_a_free_text_interest_finds_the_nearest_tag_cluster(live: str, bundle: Bundle) -> None:
    # not a tag of the bundle: retrieval embeds it with the bundle's ONNX text encoder
    clusters = TagClusters.load(bundle.path)
    assert clusters.of("scary horror films") is None
    body = recs(live, f"new-{uuid.uuid4().hex}", k=5, interests="scary horror films")
    assert body["degraded"] == [] and len(body["items"]) == 5
    for it in body["items"]:
        assert "horror" in clusters.clusters(it["tags"])
        assert "matches #horror" in it["reasons"]


def test_interests_get_places_in_a_known_users_list(live: str, bundle: Bundle,
                                                   users: list[str]) -> None:
    user = users[len(users) // 5]
    watched = set(bundle.users()[user])
    # a tag the user's list would not otherwise carry much of
    first = recs(live, user, k=8)["items"]
    shown = Counter(t for it in first for t in it["tags"])
    tag = next(t for t, _ in Counter(t for it in bundle.items for t in it["tags"]).most_common()
               if shown[t] == 0)
    body = recs(live, user, k=8, interests=tag)
    # places are reserved by tag cluster: `awkward romance` counts for the interest `romance`
    clusters = TagClusters.load(bundle.path)
    wanted = clusters.of(tag) or tag
    matching = [it for it in body["items"] if wanted in clusters.clusters(it["tags"])]
    assert len(matching) >= 2  # a quarter of 8
    assert all(f"matches #{wanted}" in it["reasons"] for it in matching)
    assert not watched & {it["item_id"] for it in body["items"]}


def test_request_filters_are_applied(live: str, bundle: Bundle, users: list[str]) -> None:
    user = users[len(users) // 3]
    first = recs(live, user, k=10)["items"]
    excluded = [first[0]["item_id"], first[1]["item_id"]]
    again = recs(live, user, k=10, exclude=excluded)["items"]
    assert not set(excluded) & {i["item_id"] for i in again}

    common = Counter(t for it in first for t in it["tags"]).most_common(1)[0][0]
    without = recs(live, user, k=10, exclude_tags=common)["items"]
    assert without and all(common not in it["tags"] for it in without)
    only = recs(live, user, k=5, include_tags=common)["items"]
    assert only and all(common in it["tags"] for it in only)


@pytest.mark.parametrize("params, field", [({"k": 0}, "k"), ({"k": 101}, "k"),
                                           ({"k": "many"}, "k")])
def test_bad_k_is_422_naming_k(live: str, params: dict, field: str) -> None:
    r = httpx.get(f"{live}/v1/users/u1/recommendations", params=params)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", field]


# ---- events ---------------------------------------------------------------------------------
def test_an_event_hides_the_item_and_shifts_the_tag_profile(
        live: str, gw_settings: Settings, bundle: Bundle, users: list[str]) -> None:
    user = users[len(users) // 4]
    before = recs(live, user, k=10)["items"]
    watched = next(it for it in before if it["tags"])
    profile_before = hydrate(gw_settings, user).tag_profile

    r = httpx.post(f"{live}/v1/events", json=event(user, watched["item_id"]))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["status"] == "accepted"

    after = recs(live, user, k=10)["items"]
    assert watched["item_id"] not in {it["item_id"] for it in after}
    profile_after = hydrate(gw_settings, user).tag_profile
    for tag in watched["tags"]:
        assert profile_after.get(tag, 0.0) > profile_before.get(tag, 0.0)
    history = httpx.get(f"{live}/v1/users/{user}/history", params={"limit": 3}).json()
    assert history["items"][-1]["item_id"] == watched["item_id"]
    assert history["items"][-1]["title"] == watched["title"]


def test_events_batch_iso_timestamps_and_duplicates(live: str, bundle: Bundle,
                                                    users: list[str]) -> None:
    user, item = users[1], bundle.items[3]["item_id"]
    first = event(user, item, timestamp="2024-05-01T12:00:00Z", type="like")
    second = event(user, item, timestamp=1714564800, type="view", watch_fraction=0.3)
    r = httpx.post(f"{live}/v1/events", json={"events": [first, second]})
    assert r.status_code == 200, r.text
    assert [o["status"] for o in r.json()["results"]] == ["accepted", "accepted"]
    r = httpx.post(f"{live}/v1/events", json=first)  # a client retry: not counted twice
    assert r.json()["results"] == [{"event_id": first["event_id"], "status": "duplicate"}]


@pytest.mark.parametrize("body, loc", [
    ({"watch_fraction": 1.5}, ["body", "watch_fraction"]),
    ({"type": "share"}, ["body", "type"]),
    ({"timestamp": "yesterday"}, ["body", "timestamp"]),
    ({"event_id": ""}, ["body", "event_id"]),
    ({"item_id": None}, ["body", "item_id"]),
])
def test_a_bad_event_is_422_naming_the_field(live: str, bundle: Bundle, body: dict,
                                             loc: list) -> None:
    r = httpx.post(f"{live}/v1/events", json={**event("u1", bundle.items[0]["item_id"]), **body})
    assert r.status_code == 422, r.text
    assert loc in [e["loc"][:len(loc)] for e in r.json()["detail"]]


def test_a_bad_event_in_a_batch_is_named_by_position(live: str, bundle: Bundle) -> None:
    good = event("u1", bundle.items[0]["item_id"])
    r = httpx.post(f"{live}/v1/events",
                   json={"events": [good, {**good, "event_id": "x", "watch_fraction": -1}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "events", 1, "watch_fraction"]


def test_an_unknown_item_is_422_and_nothing_is_written(live: str, gw_settings: Settings,
                                                       bundle: Bundle, users: list[str]) -> None:
    user = users[2]
    good = event(user, bundle.items[0]["item_id"])
    r = httpx.post(f"{live}/v1/events",
                   json={"events": [good, event(user, "no-such-item-xyz")]})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", "events", 1, "item_id"]
    assert detail[0]["input"] == "no-such-item-xyz"
    r = httpx.post(f"{live}/v1/events", json=event(user, "no-such-item-xyz"))
    assert r.json()["detail"][0]["loc"] == ["body", "item_id"]
    # the good event of the rejected batch was not recorded: sending it now is not a duplicate
    r = httpx.post(f"{live}/v1/events", json=good)
    assert r.json()["results"][0]["status"] == "accepted"


def test_invalid_json_is_422(live: str) -> None:
    r = httpx.post(f"{live}/v1/events", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body"]


# ---- items, popular, admin ------------------------------------------------------------------
def test_item_and_popular(live: str, bundle: Bundle) -> None:
    it = bundle.items[5]
    r = httpx.get(f"{live}/v1/items/{it['item_id']}")
    assert r.status_code == 200
    clusters = TagClusters.load(bundle.path).clusters(it["tags"])  # the bundle's tags.json
    assert r.json() == {"item_id": it["item_id"], "title": it["title"], "tags": it["tags"],
                        "available": True, "clusters": clusters}
    assert httpx.get(f"{live}/v1/items/no-such-item").status_code == 404
    popular = httpx.get(f"{live}/v1/popular", params={"k": 5}).json()["items"]
    most = max(bundle.items, key=lambda i: i["popularity"])
    assert len(popular) == 5
    assert popular[0]["item_id"] == most["item_id"]


def test_admin_routes_need_the_token(live: str) -> None:
    body = {"title": "x", "tags": []}
    assert httpx.put(f"{live}/v1/items/x", json=body).status_code == 401
    assert httpx.put(f"{live}/v1/items/x", json=body,
                     headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.delete(f"{live}/v1/items/x").status_code == 401
    assert httpx.post(f"{live}/admin/reload").status_code == 401


def test_an_upserted_item_can_be_recommended_then_deleted(admin: dict, live: str,
                                                           bundle: Bundle) -> None:
    tag = f"vidrec test {uuid.uuid4().hex[:8]}"
    item_id = f"new-{uuid.uuid4().hex[:8]}"
    embedding = bundle.content_embeddings()[7].tolist()  # a real content vector
    r = httpx.put(f"{live}/v1/items/{item_id}", headers=admin, timeout=60,
                  json={"title": "A brand new video", "tags": [tag], "embedding": embedding})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == [tag]

    body = recs(live, f"new-{uuid.uuid4().hex}", k=5, interests=tag)
    assert body["items"][0]["item_id"] == item_id
    assert body["items"][0]["title"] == "A brand new video"
    assert f"matches #{tag}" in body["items"][0]["reasons"]
    assert httpx.get(f"{live}/v1/items/{item_id}").json()["available"] is True

    assert httpx.delete(f"{live}/v1/items/{item_id}", headers=admin).status_code == 204
    body = recs(live, f"new-{uuid.uuid4().hex}", k=5, interests=tag)
    assert item_id not in {it["item_id"] for it in body["items"]}
    gone = httpx.get(f"{live}/v1/items/{item_id}")  # deleted: 410, not a 200 of a dead item
    assert gone.status_code == 410 and "was deleted" in gone.json()["detail"]


def test_bad_upserts_are_422_naming_the_field(admin: dict, live: str) -> None:
    r = httpx.put(f"{live}/v1/items/x1", headers=admin, json={"title": "", "tags": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "title"]
    r = httpx.put(f"{live}/v1/items/x1", headers=admin,
                  json={"title": "t", "embedding": [1.0, 2.0]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "embedding"]
    assert httpx.delete(f"{live}/v1/items/never-was", headers=admin).status_code == 404


def test_reload_under_concurrent_requests_loses_none(admin: dict, live: str, bundle: Bundle,
                                                     users: list[str]) -> None:
    def one(i: int) -> tuple[int, list[str]]:
        r = httpx.get(f"{live}/v1/users/{users[i % len(users)]}/recommendations",
                      params={"k": 10}, timeout=60)
        return r.status_code, r.json().get("degraded", ["?"])

    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(one, range(60))
        reload = httpx.post(f"{live}/admin/reload", headers=admin, timeout=120)
        answers = list(answers)
    assert reload.status_code == 200, reload.text
    assert reload.json()["bundle"] == bundle.version
    assert [a for a in answers if a != (200, [])] == []
    assert recs(live, users[0], k=3)["degraded"] == []


# ---- ops ------------------------------------------------------------------------------------
def test_ops_routes_and_docs(live: str, bundle: Bundle) -> None:
    ready = httpx.get(f"{live}/readyz").json()
    experiments = ready.pop("experiments")  # no experiments file configured: none running
    assert experiments["file"] is None and experiments["active"] is None
    assert experiments["error"] is None
    # the gateway follows the active bundle in Redis (shared/rollout.py): this one, up to date
    assert ready.pop("rollout") == {"active": bundle.version, "serving": bundle.version,
                                    "following": True, "error": None}
    assert ready == {"ready": True, "feature_store": True, "retrieval": True, "ranking": True,
                     "bundle": bundle.version}
    assert httpx.get(f"{live}/healthz").status_code == 200
    metrics = httpx.get(f"{live}/metrics").text
    assert 'vidrec_stage_seconds_count{service="gateway",stage="score"}' in metrics
    assert httpx.get(f"{live}/docs").status_code == 200
    spec = httpx.get(f"{live}/openapi.json").json()
    assert {"EventIn", "EventBatchIn", "Recommendations"} <= set(spec["components"]["schemas"])

