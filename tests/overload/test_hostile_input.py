"""Hostile input against the real gateway (small bundle, Redis, uvicorn): bodies too large are
413 before parsing, batches too long 422, ids and tags of absurd length or with control
characters 422 naming the field, a shed event batch is 503 with nothing applied, and a flood of
unknown users and items does not grow the process's memory."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from bench.overload import flood
from services.feature_store.keys import Keys
from services.gateway.catalog import Catalog
from shared.bundle import Bundle
from shared.settings import Settings
from tests.overload.proxy import FaultProxy
from tests.support import free_port, stop_process


def event(bundle: Bundle, **fields) -> dict:
    return {"event_id": uuid.uuid4().hex, "user_id": "hostile-user",
            "item_id": bundle.items[0]["item_id"], "type": "view", "timestamp": 1714564800,
            **fields}


def loc_of(r: httpx.Response) -> list:
    assert r.status_code == 422, (r.status_code, r.text[:500])
    return r.json()["detail"][0]["loc"]


def test_a_body_over_the_limit_is_413_before_parsing(live: str, bundle: Bundle) -> None:
    one = json.dumps(event(bundle)).encode()
    huge = b'{"events": [' + b",".join([one] * (2 * 2**20 // len(one))) + b"]}"
    r = httpx.post(f"{live}/v1/events", content=huge,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "over the limit of 1048576 bytes" in r.json()["detail"]
    # not JSON at all: still 413 (the size is checked before anything parses it)
    r = httpx.post(f"{live}/v1/events", content=b"\x00" * (2 * 2**20))
    assert r.status_code == 413


def test_an_event_batch_over_its_length_is_422(live: str, bundle: Bundle) -> None:
    small = {"event_id": "e", "user_id": "u", "item_id": bundle.items[0]["item_id"],
             "type": "view", "timestamp": 1}
    r = httpx.post(f"{live}/v1/events", json={"events": [small] * 1001})
    assert loc_of(r) == ["body", "events"]
    assert "1000" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("field", "value"), [
    ("user_id", "a\x00b"), ("user_id", "line\nbreak"), ("item_id", "esc\x1b[31m"),
    ("event_id", "x" * 201), ("user_id", "sep\u2028arator"), ("user_id", ""),
])
def test_event_ids_that_are_too_long_or_hold_control_characters_are_422(
        live: str, bundle: Bundle, field: str, value: str) -> None:
    r = httpx.post(f"{live}/v1/events", json=event(bundle, **{field: value}))
    assert loc_of(r) == ["body", field]
    r = httpx.post(f"{live}/v1/events", json={"events": [event(bundle),
                                                         event(bundle, **{field: value})]})
    assert loc_of(r) == ["body", "events", 1, field]


def test_control_characters_in_messages_are_named(live: str, bundle: Bundle) -> None:
    r = httpx.post(f"{live}/v1/events", json=event(bundle, user_id="a\x07b"))
    assert "control characters" in r.json()["detail"][0]["msg"]
    assert "U+0007" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("user_id", ["x" * 201, "a%00b", "tab%09bed", "del%7F"])
def test_path_user_ids_are_checked(live: str, user_id: str) -> None:
    r = httpx.get(f"{live}/v1/users/{user_id}/recommendations")
    assert loc_of(r) == ["path", "user_id"]
    r = httpx.get(f"{live}/v1/users/{user_id}/history")
    assert loc_of(r) == ["path", "user_id"]


def test_path_item_ids_are_checked(live: str) -> None:
    assert loc_of(httpx.get(f"{live}/v1/items/{'i' * 201}")) == ["path", "item_id"]
    assert loc_of(httpx.get(f"{live}/v1/items/bad%0Did")) == ["path", "item_id"]


@pytest.mark.parametrize("param", ["include_tags", "exclude_tags", "interests"])
def test_tags_in_the_query_are_checked(live: str, param: str) -> None:
    base = f"{live}/v1/users/someone/recommendations"
    assert loc_of(httpx.get(base, params={param: "bell\x07"})) == ["query", param, 0]
    assert loc_of(httpx.get(base, params={param: "t" * 1001})) == ["query", param, 0]
    assert loc_of(httpx.get(base, params=[(param, f"t{i}") for i in range(101)])
                  ) == ["query", param]
    assert httpx.get(base, params={param: "cats,dogs"}).status_code == 200


def test_excluded_ids_and_popular_tags_are_checked(live: str) -> None:
    base = f"{live}/v1/users/someone/recommendations"
    assert loc_of(httpx.get(base, params={"exclude": "a\x00"})) == ["query", "exclude", 0]
    assert loc_of(httpx.get(base, params=[("exclude", str(i)) for i in range(101)])
                  ) == ["query", "exclude"]
    assert loc_of(httpx.get(f"{live}/v1/popular", params={"tags": "x\x1f"})
                  ) == ["query", "tags", 0]


def test_upserted_tags_are_checked(live: str, admin: dict) -> None:
    url = f"{live}/v1/items/hostile-item"
    r = httpx.put(url, headers=admin, json={"title": "ok", "tags": ["fine", "no\x00pe"]})
    assert loc_of(r) == ["body", "tags", 1]
    r = httpx.put(url, headers=admin, json={"title": "ok", "tags": ["t" * 101]})
    assert loc_of(r) == ["body", "tags", 0]


# ---- a shed event batch: nothing of it applied -------------------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is required"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port, client
    client.close()
    stop_process(proc)


def test_a_shed_event_batch_gets_503_and_nothing_of_it_is_applied(
        gw_settings: Settings, serve_app, bundle: Bundle, own_redis) -> None:
    """max_in_flight=1, Redis behind a slow proxy: one recommendation request holds the only
    slot while its hydrate waits on Redis; an event batch sent meanwhile is shed (503, even
    with shed_recommendations=popular), and a recommendation request gets the popular list
    flagged degraded=["admission"]."""
    from services.feature_store.loader import load_bundle
    from services.gateway.app import create_app

    port, client = own_redis
    with FaultProxy(port) as proxy:
        settings = gw_settings.model_copy(update={
            "redis_url": f"redis://127.0.0.1:{proxy.port}/0", "max_in_flight": 1,
            "shed_recommendations": "popular"})
        load_bundle(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}),
                    settings.bundle, progress=False)
        with serve_app(create_app(settings)) as base:
            batch = {"events": [event(bundle, user_id="shed-user") for _ in range(3)]}

            async def scenario() -> tuple[httpx.Response, ...]:
                async with httpx.AsyncClient(timeout=30) as http:
                    proxy.slow(1.0, 1.0)
                    held = asyncio.create_task(
                        http.get(f"{base}/v1/users/someone/recommendations"))
                    await asyncio.sleep(0.3)  # the request is in its hydrate now
                    shed = await http.post(f"{base}/v1/events", json=batch)
                    popular = await http.get(f"{base}/v1/users/u%2F1/recommendations",
                                             params={"k": 7})
                    proxy.heal()
                    return shed, popular, await held

            shed, popular, held = asyncio.run(scenario())
            assert held.status_code == 200
            assert shed.status_code == 503, shed.text
            assert shed.headers["retry-after"] == "1"
            body = popular.json()
            assert popular.status_code == 200 and body["degraded"] == ["admission"]
            assert body["user_id"] == "u/1" and len(body["items"]) == 7
            assert body["items"][0]["item_id"] == Catalog.from_bundle(bundle).popular[0]
            assert body["model_version"] == bundle.version
            keys = Keys(settings.key_prefix, settings.events_stream)
            assert client.exists(*keys.user_keys("shed-user")) == 0
            # the retry, with capacity back, is applied in full
            r = httpx.post(f"{base}/v1/events", json=batch, timeout=30)
            assert r.status_code == 200, r.text
            assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 3


# ---- memory: a flood of unknown users and items ------------------------------------------------
def test_a_flood_of_unknown_users_and_items_does_not_grow_memory(live: str) -> None:
    """Reduced in CI (4,000 requests after 1,000 of warm-up); bench/overload.py runs 100,000.
    The gateway runs in this process (a uvicorn thread), so this process's RSS is its RSS."""
    port = int(live.rsplit(":", 1)[1])
    me = psutil.Process()
    asyncio.run(flood(port, 1000, "warm", concurrency=4))
    gc.collect()
    before = me.memory_info().rss
    counts = asyncio.run(flood(port, 4000, uuid.uuid4().hex[:6], concurrency=4))
    gc.collect()
    growth = me.memory_info().rss - before
    assert counts == {"200": 2000, "404": 1000, "422": 1000}, counts
    # 4,000 distinct unknown ids: a per-id cache of even 4 KB would show as 16 MB.
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB"
