"""Experiments through the real gateway (real bundle, Redis, FAISS, ONNX, HTTP): arms and their
pipelines, a second bundle served side by side, impressions, attribution of events (late and
duplicate ones included), the report, /metrics and reloading the file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.feature_store.loader import load_bundle
from shared.bundle import Bundle
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix, gateway_settings, serving
from tests.retrieval.conftest import link_bundle

EXPERIMENTS = """\
[experiments.home]
control = "full"
ctr_k = 5

[experiments.home.arms.full]
weight = 40

[experiments.home.arms.pop]
weight = 30
sources = ["popular"]
ranker = false
max_per_tag = 0
candidates = {{ popular = 300 }}

[experiments.home.arms.next]
weight = 30
bundle = "{other}"
"""
OTHER = "small-next"


@pytest.fixture(scope="module")
def exp_env(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Settings, Path]]:
    root = tmp_path_factory.mktemp("experiments")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    (artifacts / small_bundle.name).symlink_to(small_bundle)
    link_bundle(small_bundle, artifacts, OTHER)
    exp_file = root / "experiments.toml"
    exp_file.write_text(EXPERIMENTS.format(other=OTHER))
    settings = gateway_settings(artifacts / small_bundle.name, root / "state",
                                experiments_file=exp_file, experiments_check_s=0.1)
    load_bundle(settings, settings.bundle, progress=False)
    try:
        yield settings, exp_file
    finally:
        delete_prefix(settings)


@pytest.fixture(scope="module")
def base(exp_env: tuple[Settings, Path]) -> Iterator[str]:
    from services.gateway.app import create_app

    with serving(create_app(exp_env[0])) as url:
        yield url


def _users(bundle: Bundle) -> list[str]:
    return sorted(bundle.users())


def _recs(base: str, user: str, k: int = 10, **headers: str) -> dict:
    r = httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": k},
                  headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _report(base: str, until=lambda rep: True, timeout_s: float = 10.0) -> dict:
    """The experiment report, once `until(report)` holds (counters are written off the
    request path, a moment after the answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rep = httpx.get(f"{base}/v1/experiments/home", timeout=30).json()
        if until(rep) or time.monotonic() > deadline:
            return rep
        time.sleep(0.05)


def _arm(rep: dict, name: str) -> dict:
    return next(a for a in rep["arms"] if a["arm"] == name)


def test_answers_carry_request_id_arm_and_model_version(base: str, bundle: Bundle) -> None:
    users = _users(bundle)
    seen_arms = {}
    for user in users[:60]:
        body = _recs(base, user)
        assert len(body["request_id"]) == 32 and body["experiment"] == "home"
        assert body["arm"] in {"full", "pop", "next"}
        assert body["degraded"] == [], body["degraded"]
        seen_arms.setdefault(body["arm"], []).append((user, body))
        assert _recs(base, user)["arm"] == body["arm"]  # sticky
    assert set(seen_arms) == {"full", "pop", "next"}
    # each arm's answer comes from its own bundle
    assert {b["model_version"] for _, b in seen_arms["next"]} == {OTHER}
    assert {b["model_version"] for _, b in seen_arms["full"]} == {bundle.version}


def test_popularity_arm_answers_the_popular_list(base: str, bundle: Bundle,
                                                 exp_env: tuple[Settings, Path]) -> None:
    # what the arm's settings promise: no ranker, popular source only, no tag cap ->
    # the most popular items the user has not seen, in order
    client = redis.Redis.from_url(exp_env[0].redis_url, decode_responses=True)
    by_popularity = [it["item_id"] for it in sorted(
        bundle.items, key=lambda it: -float(it.get("popularity", 0.0)))]
    for user in _users(bundle)[:5]:
        body = _recs(base, user, k=10, **{"X-Vidrec-Arm": "pop"})
        assert body["arm"] == "pop"
        seen = client.smembers(f"{exp_env[0].key_prefix}:{{u:{user}}}:seen")
        expected = [i for i in by_popularity if i not in seen][:10]
        assert [it["item_id"] for it in body["items"]] == expected
    client.close()


def test_qa_header_forces_an_arm_and_rejects_an_unknown_one(base: str, bundle: Bundle) -> None:
    user = _users(bundle)[0]
    for arm in ("full", "pop", "next", "home:next"):
        assert _recs(base, user, **{"X-Vidrec-Arm": arm})["arm"] == arm.split(":")[-1]
    r = httpx.get(f"{base}/v1/users/{user}/recommendations",
                  headers={"X-Vidrec-Arm": "nope"}, timeout=30)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "X-Vidrec-Arm"]
    assert "no arm 'nope'" in r.json()["detail"][0]["msg"]


def test_impression_is_logged_to_the_stream(base: str, bundle: Bundle,
                                            exp_env: tuple[Settings, Path]) -> None:
    settings = exp_env[0]
    body = _recs(base, _users(bundle)[1])
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            entries = client.xrange(f"{settings.key_prefix}:impressions")
            found = [f for _, f in entries if f["request_id"] == body["request_id"]]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        client.close()
    assert found, "no impression for the answer"
    (imp,) = found
    assert imp["user_id"] == body["user_id"] and imp["arm"] == body["arm"]
    assert imp["experiment"] == "home" and imp["model_version"] == body["model_version"]
    import json

    assert json.loads(imp["items"]) == [it["item_id"] for it in body["items"]]
    assert abs(float(imp["timestamp"]) - time.time()) < 60


def test_events_are_attributed_once_and_in_window(base: str, bundle: Bundle) -> None:
    users = _users(bundle)
    # one user of the "full" arm, by assignment (forced answers are not counted)
    user, body = next((u, b) for u in users[60:] if (b := _recs(base, u))["arm"] == "full")
    before = _arm(_report(base), "full")
    rid, items = body["request_id"], [it["item_id"] for it in body["items"]]
    now = time.time()

    def event(eid: str, pos: int, kind: str = "view", ts: float = now, **extra) -> dict:
        return {"event_id": f"{rid}-{eid}", "user_id": user, "item_id": items[pos],
                "type": kind, "timestamp": ts, "request_id": rid, "position": pos,
                "watch_fraction": 0.5, **extra}

    def post(*events: dict) -> list[str]:
        r = httpx.post(f"{base}/v1/events", json={"events": list(events)}, timeout=30)
        assert r.status_code == 200, r.text
        return [x["status"] for x in r.json()["results"]]

    # a play at position 2 (< ctr_k 5): the impression is clicked
    assert post(event("a", 2)) == ["accepted"]
    # the same event again (a client retry): counted once
    assert post(event("a", 2)) == ["duplicate"]
    # a second play of the same answer: one more play, still one clicked impression
    assert post(event("b", 3, "complete", watch_fraction=1.0)) == ["accepted"]
    # a like, without a position (found from the impression), and a skip
    assert post(event("c", 0, "like", position=None), event("d", 4, "skip")) == \
        ["accepted", "accepted"]
    # a request id the server never issued, and an event without one: not attributed
    assert post({**event("e", 1), "request_id": "f" * 32},
                {**event("f", 1), "request_id": None}) == ["accepted", "accepted"]
    after = _arm(_report(base, lambda r: _arm(r, "full")["skips"] > before["skips"]), "full")
    assert after["clicked_impressions"] - before["clicked_impressions"] == 1
    assert after["plays"] - before["plays"] == 1
    assert after["completions"] - before["completions"] == 1
    assert after["likes"] - before["likes"] == 1
    assert after["skips"] - before["skips"] == 1
    assert after["watch_fraction"]["n"] - before["watch_fraction"]["n"] == 2

    # another answer, whose only play comes after the attribution window: late, not clicked
    user2, body2 = next((u, b) for u in users[70:] if (b := _recs(base, u))["arm"] == "full")
    mid = _arm(_report(base), "full")
    rid2 = body2["request_id"]
    late = {"event_id": f"{rid2}-late", "user_id": user2, "item_id": body2["items"][0]["item_id"],
            "type": "view", "timestamp": time.time() + 3600, "request_id": rid2, "position": 0}
    assert post(late) == ["accepted"]
    end = _arm(_report(base, lambda r: _arm(r, "full")["late"] > mid["late"]), "full")
    assert end["late"] - mid["late"] == 1 and end["plays"] - mid["plays"] == 1
    assert end["clicked_impressions"] == mid["clicked_impressions"]
    # another user cannot claim someone else's impression
    other = {**late, "event_id": f"{rid2}-thief", "user_id": user, "timestamp": time.time()}
    assert post(other) == ["accepted"]
    time.sleep(0.3)
    assert _arm(_report(base), "full")["plays"] == end["plays"]


def test_report_has_intervals_tests_and_metrics(base: str, bundle: Bundle) -> None:
    for user in _users(bundle)[:30]:
        _recs(base, user)
    rep = _report(base, lambda r: r["impressions"] >= 30)
    assert rep["experiment"] == "home" and rep["active"] and rep["control"] == "full"
    assert [a["arm"] for a in rep["arms"]] == ["full", "pop", "next"]
    full, pop = _arm(rep, "full"), _arm(rep, "pop")
    assert full["control"] and "vs_control" not in full
    assert set(pop["vs_control"]) == {"ctr", "watch_fraction", "error_rate"}
    assert pop["guardrail"]["flagged"] in (True, False)
    assert full["latency_ms"]["p50"] > 0 and full["latency_ms"]["p99"] >= full["latency_ms"]["p50"]
    assert 0 < full["coverage"] <= 1 and full["distinct_items"] > 0
    assert full["ctr"]["ci95"] is not None
    assert sum(a["expected_share"] for a in rep["arms"]) == pytest.approx(1.0)
    assert httpx.get(f"{base}/v1/experiments/nope", timeout=30).status_code == 404

    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'vidrec_experiment_requests_total{arm="pop",experiment="home",outcome="ok"}' in metrics
    assert 'vidrec_experiment_request_seconds_count{arm="next",experiment="home"}' in metrics
    # both bundles held side by side, with their memory, in retrieval and ranking
    for service in ("retrieval", "ranking"):
        for bundle_name, role in ((bundle.version, "main"), (OTHER, "extra")):
            line = (f'vidrec_bundle_bytes{{bundle="{bundle_name}",role="{role}",'
                    f'service="{service}"}}')
            assert line in metrics, (line, [m for m in metrics.splitlines() if "bundle_bytes" in m])


def test_reload_refuses_a_bad_file_and_keeps_serving(base: str, bundle: Bundle,
                                                     exp_env: tuple[Settings, Path],
                                                     admin: dict[str, str]) -> None:
    exp_file = exp_env[1]
    good = exp_file.read_text()
    user = _users(bundle)[5]
    arm = _recs(base, user)["arm"]
    try:
        exp_file.write_text(good.replace("weight = 30\nsources", "weight = \"thirty\"\nsources"))
        r = httpx.post(f"{base}/admin/experiments/reload", headers=admin, timeout=30)
        assert r.status_code == 400
        assert "line 9" in r.json()["detail"] and "weight" in r.json()["detail"]
        assert _recs(base, user)["arm"] == arm  # the previous configuration still serves
        status = httpx.get(f"{base}/v1/experiments", timeout=30).json()
        assert status["active"] == "home" and "line 9" in status["error"]
        assert httpx.post(f"{base}/admin/experiments/reload",
                          timeout=30).status_code == 401  # admin only

        # a good file is picked up without a restart (the watcher sees the new mtime)
        exp_file.write_text(good.replace("[experiments.home]\n",
                                         "[experiments.home]\nactive = false\n"))
        deadline = time.monotonic() + 10
        while _recs(base, user)["experiment"] is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        body = _recs(base, user)
        assert body["experiment"] is None and body["arm"] is None and body["request_id"]
        # the stopped experiment's report stays readable
        assert httpx.get(f"{base}/v1/experiments/home", timeout=30).json()["active"] is False
    finally:
        exp_file.write_text(good)
        r = httpx.post(f"{base}/admin/experiments/reload", headers=admin, timeout=30)
        assert r.status_code == 200 and r.json()["active"] == "home"
