"""Prometheus metrics shared by every service, and the /healthz, /readyz, /metrics routes.

One process may host all services, so every metric carries a `service` label instead of
having per-service metric names.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08,
            0.12, 0.2, 0.5, 1.0, 2.0)

STAGE_SECONDS = Histogram("vidrec_stage_seconds", "Time spent per stage.",
                          ["service", "stage"], buckets=_BUCKETS)
CANDIDATES = Counter("vidrec_candidates_total", "Candidates proposed per source.", ["source"])
FILTERED = Counter("vidrec_filtered_total", "Candidates removed per filter.", ["filter"])
DEGRADED = Counter("vidrec_degraded_total", "Requests answered with a degraded stage.",
                   ["service", "stage"])
EVENTS = Counter("vidrec_events_total", "Events by outcome.", ["type", "status"])
BUNDLE_BYTES = Gauge("vidrec_bundle_bytes",
                     "Memory held per loaded bundle (its arrays plus the index and model files "
                     "loaded from it); role: main, or extra (served for an experiment arm).",
                     ["service", "bundle", "role"])
# Objects moved out of the collector's full passes after a load (shared/memory.py
# freeze_loaded): 0 in a serving process means every full pass walks the whole bundle.
GC_FROZEN = Gauge("vidrec_gc_frozen_objects",
                  "Objects kept out of the garbage collector's full passes (gc.freeze).")
GC_FROZEN.set_function(gc.get_freeze_count)


@contextmanager
def timed(service: str, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(service, stage).observe(time.perf_counter() - start)


def add_ops_routes(app: FastAPI, ready: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """`ready()` returns a dict with at least {"ready": bool}; /readyz answers 503 when False."""

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, Any]:
        state = await ready()
        if not state.get("ready"):
            response.status_code = 503
        return state

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
