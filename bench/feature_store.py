"""Feature store latency on a real bundle and the Redis in settings (loopback by default).

    .venv/bin/python -m bench.feature_store [--bundle VERSION] [--repeats 2000]

Loads the bundle under a throwaway key prefix (timing `load_bundle`), then measures in-process
FeatureStore calls one at a time: hydrate (history_len from settings), item_meta of 100 ids,
record_events of 1 and of 100 events. Writes bench/results/feature_store.json (median / p90 /
p99 milliseconds) and deletes its keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from itertools import islice
from pathlib import Path

import numpy as np
import redis
from redis.utils import HIREDIS_AVAILABLE

from services.feature_store.loader import load_bundle
from services.feature_store.store import FeatureStore
from shared.bundle import Bundle
from shared.contracts import Event
from shared.redis_conn import make_redis_sync
from shared.settings import Settings, get_settings

OUT = Path(__file__).parent / "results" / "feature_store.json"


def _ms(samples: list[float]) -> dict[str, float]:
    arr = np.array(samples) * 1000
    return {f"{name}_ms": round(float(np.percentile(arr, q)), 4)
            for name, q in (("median", 50), ("p90", 90), ("p99", 99))}


async def _time(fn: Callable[[int], Awaitable[object]], repeats: int) -> dict[str, float]:
    for i in range(min(50, repeats)):  # warm-up: connections, script cache
        await fn(-1 - i)
    samples = []
    for i in range(repeats):
        t0 = time.perf_counter()
        await fn(i)
        samples.append(time.perf_counter() - t0)
    return _ms(samples)


async def _measure(settings: Settings, bundle: Bundle, repeats: int) -> dict[str, dict]:
    rng = random.Random(0)
    users = [u for u, seq in bundle.users().items() if seq]
    item_ids = [it["item_id"] for it in bundle.items]
    store = FeatureStore.from_settings(settings)
    run = uuid.uuid4().hex[:6]

    def events(i: int, n: int) -> list[Event]:
        return [Event(event_id=f"{run}-{i}-{j}", user_id=rng.choice(users),
                      item_id=rng.choice(item_ids), type="view", timestamp=time.time(),
                      watch_fraction=0.7) for j in range(n)]

    try:
        return {
            "hydrate": await _time(
                lambda i: store.hydrate(rng.choice(users), settings.history_len), repeats),
            "item_meta_100": await _time(
                lambda i: store.item_meta(rng.sample(item_ids, 100)), repeats),
            "record_events_1": await _time(
                lambda i: store.record_events(events(i, 1)), repeats // 4),
            "record_events_100": await _time(
                lambda i: store.record_events(events(i, 100)), max(20, repeats // 40)),
        }
    finally:
        await store.aclose()


def _delete_prefix(settings: Settings) -> None:
    r = make_redis_sync(settings)
    pattern = f"{settings.key_prefix}:*"
    try:
        if isinstance(r, redis.Redis):
            while keys := list(islice(r.scan_iter(match=pattern, count=5000), 50_000)):
                r.unlink(*keys)
        else:  # cluster: one key per call (no cross-slot UNLINK)
            for key in r.scan_iter(match=pattern, count=5000):
                r.unlink(key)
    finally:
        r.close()


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--bundle", default=None)
    args.add_argument("--repeats", type=int, default=2000)
    opts = args.parse_args()

    base = get_settings()
    settings = base.model_copy(update={"key_prefix": f"vidrec:bench:{uuid.uuid4().hex[:8]}"})
    bundle = Bundle.open(settings.artifacts_dir, opts.bundle or settings.bundle)
    try:
        stats = load_bundle(settings, str(bundle.path))
        results = asyncio.run(_measure(settings, bundle, opts.repeats))
    finally:
        _delete_prefix(settings)
    report = {
        "bundle": bundle.version, "redis_url": settings.redis_url.split("@")[-1],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_1m": round(os.getloadavg()[0], 2),
                    "hiredis": HIREDIS_AVAILABLE},
        "load": {"items": stats.items, "users": stats.users,
                 "interactions": stats.interactions, "seconds": round(stats.seconds, 2)},
        "latency": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
