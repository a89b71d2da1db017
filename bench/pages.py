"""What the pages add to the serving process, measured side by side in one run:

- the request-metrics middleware (per-route counter and histogram on every request): the same
  ASGI app called directly with and without it, alternating rounds;
- one console sample (`StatsWindow.tick`: reading the registry, differences, quantiles), which
  runs every VIDREC_CONSOLE_SAMPLE_S seconds;
- similar items (`RetrievalService.similar_now`, k=10) on a real bundle: learned neighbours by an
  exact product over every item, content neighbours by a FAISS search.

    .venv/bin/python -m bench.pages [--bundle VERSION] [--rounds 7]

Writes bench/results/pages.json with medians over rounds and the 1-minute load average (on a
shared machine it explains most of the spread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI

from services.gateway.console_stats import StatsWindow
from services.gateway.request_metrics import RequestMetrics
from shared.settings import get_settings

OUT = Path(__file__).parent / "results" / "pages.json"


def tiny_app(with_metrics: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/users/{user_id}/recommendations")
    async def recs(user_id: str) -> dict:
        return {"user_id": user_id}

    if with_metrics:
        app.add_middleware(RequestMetrics)
    return app


async def call_many(app, n: int) -> float:
    """Seconds per request, the app called as uvicorn would (no network)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/v1/users/42/recommendations", "raw_path": b"",
             "query_string": b"", "root_path": "", "headers": [], "server": ("x", 80),
             "client": ("y", 1)}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - start) / n


async def middleware_overhead(rounds: int, n: int) -> dict:
    apps = {"without": tiny_app(False), "with": tiny_app(True)}
    for app in apps.values():  # build the middleware stacks once
        await call_many(app, 100)
    samples: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(rounds):
        for name, app in apps.items():
            samples[name].append(await call_many(app, n))
    med = {k: float(np.median(v)) * 1e6 for k, v in samples.items()}
    return {"requests_per_round": n, "rounds": rounds,
            "median_us_per_request": {k: round(v, 2) for k, v in med.items()},
            "added_us_per_request": round(med["with"] - med["without"], 2)}


def console_tick(rounds: int) -> dict:
    window = StatsWindow(interval_s=5.0)
    times = []
    for _ in range(rounds * 20):
        start = time.perf_counter()
        window.tick()
        times.append(time.perf_counter() - start)
    return {"ticks": len(times), "median_ms": round(float(np.median(times)) * 1000, 3)}


async def similar_latency(bundle: str | None, rounds: int) -> dict:
    from services.retrieval.service import RetrievalService

    settings = get_settings()
    if bundle:
        settings = settings.model_copy(update={"bundle": bundle})
    service = await RetrievalService.open(settings.model_copy(update={"use_gpu": False}))
    state = service.state
    rng = np.random.default_rng(0)
    items = [state.item_ids[r] for r in rng.choice(state.n_bundle, size=50, replace=False)]
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            service.similar_now(item, 10)
        per_round.append((time.perf_counter() - start) / len(items))
    return {"bundle": state.version, "items_in_catalogue": state.live_items,
            "index": state.index_kind, "k": 10, "items_per_round": len(items),
            "median_ms": round(float(np.median(per_round)) * 1000, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=5000)
    args = p.parse_args()
    result = {
        "middleware": asyncio.run(middleware_overhead(args.rounds, args.requests)),
        "console_tick": console_tick(args.rounds),
        "similar": asyncio.run(similar_latency(args.bundle, args.rounds)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "machine": platform.machine(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
