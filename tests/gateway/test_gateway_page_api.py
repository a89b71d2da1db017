"""What the pages read and send, over real HTTP in one process (real bundle, Redis, FAISS,
onnxruntime): similar items, dislikes, the catalogue's tags and users, the console's statistics
and bundle metrics, and the pages themselves."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx
import pytest

from services.feature_store.store import FeatureStore
from services.gateway.console_stats import Raw, interval, quantile
from shared.bundle import Bundle
from shared.settings import Settings
from shared.sources import SOURCE_NAMES
from tests.gateway.conftest import recs


def profile(settings: Settings, user: str) -> dict[str, float]:
    async def go():
        store = FeatureStore.from_settings(settings)
        try:
            return (await store.hydrate(user, settings.history_len)).tag_profile
        finally:
            await store.aclose()

    return asyncio.run(go())


# ---- similar --------------------------------------------------------------------------------
def test_similar_items_from_both_spaces_with_titles(live: str, bundle: Bundle) -> None:
    item = sorted(bundle.items, key=lambda it: -it["popularity"])[3]
    r = httpx.get(f"{live}/v1/items/{item['item_id']}/similar", params={"k": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["item_id"] == item["item_id"] and body["title"] == item["title"]
    titles = {it["item_id"]: it["title"] for it in bundle.items}
    assert len(body["items"]) == 8
    assert {s["source"] for s in body["items"]} == {"ann", "content"}
    for s in body["items"]:
        assert s["item_id"] != item["item_id"]
        assert s["title"] == titles[s["item_id"]] and isinstance(s["score"], float)


@pytest.mark.parametrize("path, params, code, says", [
    ("/v1/items/no-such-video/similar", {}, 404, "not in the catalogue"),
    ("/v1/items/x/similar", {"k": 0}, 422, "greater than or equal to 1"),
    ("/v1/items/x/similar", {"k": 101}, 422, "less than or equal to 100"),
])
def test_similar_refuses_what_it_cannot_answer(live: str, path: str, params: dict, code: int,
                                               says: str) -> None:
    r = httpx.get(live + path, params=params)
    assert r.status_code == code
    assert says in str(r.json()["detail"])


def test_a_deleted_item_has_no_similar_page(admin: dict, live: str) -> None:
    item_id = f"page-{uuid.uuid4().hex[:8]}"
    r = httpx.put(f"{live}/v1/items/{item_id}", headers=admin, timeout=30,
                  json={"title": "A cat plays the piano", "tags": ["cats", "music"]})
    assert r.status_code == 200, r.text
    assert httpx.get(f"{live}/v1/items/{item_id}/similar").status_code == 200
    assert httpx.delete(f"{live}/v1/items/{item_id}", headers=admin).status_code == 204
    assert httpx.get(f"{live}/v1/items/{item_id}/similar").status_code == 404


# ---- dislike --------------------------------------------------------------------------------
def test_a_dislike_hides_the_item_and_pushes_its_tags_down(
        live: str, gw_settings: Settings, users: list[str]) -> None:
    user = users[(len(users) * 2) // 3]
    before = recs(live, user, k=10)["items"]
    disliked = next(it for it in before if it["tags"])
    profile_before = profile(gw_settings, user)
    history_before = httpx.get(f"{live}/v1/users/{user}/history").json()["items"]
    r = httpx.post(f"{live}/v1/events", json={
        "event_id": uuid.uuid4().hex, "user_id": user, "item_id": disliked["item_id"],
        "type": "dislike", "timestamp": time.time()})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "accepted", r.text

    after = recs(live, user, k=10)["items"]
    assert disliked["item_id"] not in {it["item_id"] for it in after}
    profile_after = profile(gw_settings, user)
    # the profile counts tag clusters (docs/tags.md): the item's clusters, else its tags
    meta = httpx.get(f"{live}/v1/items/{disliked['item_id']}").json()
    for key in meta.get("clusters") or meta["tags"]:
        assert profile_after[key] < profile_before.get(key, 0.0)
    # not a watch: the history (the ranker's input) is unchanged
    assert httpx.get(f"{live}/v1/users/{user}/history").json()["items"] == history_before


def test_the_profile_shows_liked_tags_up_and_disliked_tags_down(live: str,
                                                                bundle: Bundle) -> None:
    user = f"new-{uuid.uuid4().hex}"
    empty = httpx.get(f"{live}/v1/users/{user}/profile").json()
    assert empty == {"user_id": user, "known": False, "liked": [], "disliked": [], "seen": 0}
    liked = next(it for it in bundle.items if len(set(it["tags"])) >= 2)
    disliked = next(it for it in bundle.items
                    if it["tags"] and not set(it["tags"]) & set(liked["tags"]))
    for item, kind in ((liked, "like"), (disliked, "dislike")):
        r = httpx.post(f"{live}/v1/events", json={
            "event_id": uuid.uuid4().hex, "user_id": user, "item_id": item["item_id"],
            "type": kind, "timestamp": time.time()})
        assert r.status_code == 200, r.text
    body = httpx.get(f"{live}/v1/users/{user}/profile", params={"limit": 100}).json()
    assert body["known"] and body["seen"] == 2
    assert {t["tag"] for t in body["liked"]} == set(liked["tags"])
    assert all(t["weight"] == pytest.approx(2.0, rel=1e-3) for t in body["liked"])
    assert {t["tag"] for t in body["disliked"]} == set(disliked["tags"])
    assert all(t["weight"] == pytest.approx(-2.0, rel=1e-3) for t in body["disliked"])


def test_recommendations_name_the_source_of_each_item(live: str, users: list[str]) -> None:
    body = recs(live, users[(len(users) * 3) // 5], k=10)
    assert {it["source"] for it in body["items"]} <= set(SOURCE_NAMES)
    assert body["items"][0]["source"]


# ---- browsing: tags and users ---------------------------------------------------------------
def test_catalogue_tags_most_common_first_and_filtered(live: str, bundle: Bundle) -> None:
    counts = Counter(t for it in bundle.items for t in set(it["tags"]))
    body = httpx.get(f"{live}/v1/tags", params={"limit": 5}).json()
    assert [t["items"] for t in body["tags"]] == sorted((n for _, n in counts.most_common(5)),
                                                        reverse=True)
    assert body["matching"] == len(counts)
    tag = counts.most_common(1)[0][0]
    part = tag[1:4]
    found = httpx.get(f"{live}/v1/tags", params={"q": part.upper(), "limit": 1000}).json()
    assert found["tags"] and all(part in t["tag"] for t in found["tags"])
    assert tag in {t["tag"] for t in found["tags"]}


def test_users_by_prefix_and_at_random(live: str, bundle: Bundle) -> None:
    seqs = bundle.users()
    some = sorted(seqs)[len(seqs) // 2]
    body = httpx.get(f"{live}/v1/users", params={"q": some[:1], "limit": 200}).json()
    assert body["total"] == len(seqs) and body["bundle"] == bundle.version
    ids = [u["user_id"] for u in body["users"]]
    assert some in ids and ids == sorted(ids) and all(u.startswith(some[:1]) for u in ids)
    assert {u["user_id"]: u["interactions"] for u in body["users"]}[some] == len(seqs[some])
    picked = httpx.get(f"{live}/v1/users", params={"random": "true", "limit": 3}).json()["users"]
    assert len(picked) == 3 and all(u["user_id"] in seqs for u in picked)
    assert httpx.get(f"{live}/v1/users", params={"limit": 0}).status_code == 422


# ---- the console's data ---------------------------------------------------------------------
def test_bundle_metrics_for_the_console(live: str, bundle: Bundle) -> None:
    body = httpx.get(f"{live}/v1/bundle").json()
    assert body["version"] == bundle.version
    assert "two_stage" in body["metrics"]["models"]
    assert set(SOURCE_NAMES) <= set(body["retrieval"]["recall_of_test_item"]["by_source"])
    assert body["chart"] is True
    png = httpx.get(f"{live}/v1/bundle/metrics.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_hold_intervals_of_requests_and_stage_latency(live: str, users: list[str]) -> None:
    # The app samples every settings.console_sample_s (5 s); a fresh reading of the registry
    # against an older one is what each sample is made of.
    from services.gateway.console_stats import read_raw

    old = read_raw()
    for user in users[:5]:
        recs(live, user, k=5)
    # The middleware counts a request once its answer is sent, a moment after the client has
    # it: read again (bounded) until the fifth one is in.
    for _ in range(100):
        point = interval(old, read_raw(old.t + 2.0))
        if point["recommendations_per_s"] >= 5 / 2.0:
            break
        time.sleep(0.02)
    assert point["recommendations_per_s"] == pytest.approx(5 / 2.0)
    assert point["requests_per_s"] >= point["recommendations_per_s"]
    for stage in ("hydrate", "retrieve", "score", "items"):
        s = point["stages"][stage]
        assert s["count"] == 5 and 0 < s["p50_ms"] <= s["p99_ms"]
    assert point["recommendation_ms"]["p99"] >= point["stages"]["score"]["p50_ms"]
    body = httpx.get(f"{live}/stats").json()
    assert body["interval_s"] == 5.0 and body["window_s"] == 600.0
    assert isinstance(body["samples"], list)


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.004, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.002)
    assert quantile(0.75, buckets) == pytest.approx(0.003)
    assert quantile(0.25, buckets) == pytest.approx(0.0015)
    assert quantile(0.99, [(0.001, 0.0), (float("inf"), 10.0)]) == 0.001  # past the last bound
    assert quantile(0.5, []) is None and quantile(0.5, [(1.0, 0.0)]) is None


def test_ops_routes_are_left_out_of_requests_per_second() -> None:
    old = Raw(t=0.0, requests={("/stats", "200"): 0.0, ("/v1/events", "200"): 0.0})
    new = Raw(t=10.0, requests={("/stats", "200"): 50.0, ("/v1/events", "200"): 20.0,
                                ("/v1/events", "503"): 5.0})
    point = interval(old, new)
    assert point["requests_per_s"] == 2.5 and point["events_per_s"] == 2.5
    assert point["errors_per_s"] == 0.5


# ---- the pages ------------------------------------------------------------------------------
@pytest.mark.parametrize("path, marker", [("/", "Who is watching?"),
                                          ("/console", "Offline metrics")])
def test_pages_and_their_files_are_served_from_the_package(live: str, path: str,
                                                           marker: str) -> None:
    r = httpx.get(live + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert marker in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere
    for asset in ("/web/common.js", "/web/vidrec.css"):
        assert asset in r.text
        got = httpx.get(live + asset)
        assert got.status_code == 200 and got.content


def test_every_page_file_ships_in_the_package() -> None:
    """Images install the wheel, not the source tree: pyproject's package-data must name every
    file of services/gateway/web/ (a new file type would otherwise be missing in containers)."""
    import fnmatch
    import tomllib

    from services.gateway.routes.pages import WEB

    project = tomllib.loads((WEB.parents[2] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["services.gateway"]
    files = [p.relative_to(WEB.parent).as_posix() for p in WEB.rglob("*") if p.is_file()]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
