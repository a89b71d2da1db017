"""The last minutes of the gateway's own metrics, as JSON for the console (`GET /stats`).

Prometheus metrics are cumulative since start; a person on call wants "now": requests/s, p50
and p99 per stage, degraded answers, per interval over the last minutes, as soon as the console
opens. A sampler task reads the counters every `interval_s` and keeps the differences in a ring
(10 minutes by default), so nothing depends on a Prometheus server being deployed.

Quantiles come from histogram bucket differences, interpolated linearly inside the bucket the
way Prometheus' histogram_quantile() does (prometheus_client has no quantile estimator).

Each worker process (`vidrec serve --workers N`) keeps its own window of its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from services.gateway.request_metrics import HTTP_REQUESTS, HTTP_SECONDS
from shared.observability import DEGRADED, STAGE_SECONDS

log = logging.getLogger("vidrec.gateway")

SERVICE = "gateway"
RECOMMEND_ROUTE = "/v1/users/{user_id}/recommendations"
EVENTS_ROUTE = "/v1/events"
# Routes that are the operators' own traffic (the console polling, probes, the page's files):
# left out of requests/s so that watching the system does not change what is watched.
OPS_ROUTES = frozenset({"/stats", "/metrics", "/healthz", "/readyz", "/", "/console", "/web",
                        "/v1/bundle", "/v1/bundle/metrics.png"})

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending


@dataclass
class Raw:
    """Cumulative values read at one moment."""

    t: float
    requests: dict[tuple[str, ...], float] = field(default_factory=dict)  # (route, status)
    stages: dict[str, Buckets] = field(default_factory=dict)
    recommend: Buckets = field(default_factory=list)
    degraded: dict[str, float] = field(default_factory=dict)


def _buckets(metric: Histogram, service: str, key: str) -> dict[str, Buckets]:
    """Cumulative buckets of each child of `metric` for `service`, keyed by label `key`."""
    out: dict[str, Buckets] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_bucket") and s.labels.get("service") == service:
                out.setdefault(s.labels[key], []).append((float(s.labels["le"]), s.value))
    for b in out.values():
        b.sort()
    return out


def _counter(metric: Counter, service: str, keys: tuple[str, ...]
             ) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("service") == service:
                out[tuple(s.labels[k] for k in keys)] = s.value
    return out


def read_raw(now: float | None = None) -> Raw:
    stages = _buckets(STAGE_SECONDS, SERVICE, "stage")
    routes = _buckets(HTTP_SECONDS, SERVICE, "route")
    return Raw(t=time.time() if now is None else now,
               requests=_counter(HTTP_REQUESTS, SERVICE, ("route", "status")),
               stages=stages, recommend=routes.get(RECOMMEND_ROUTE, []),
               degraded={k[0]: v for k, v in _counter(DEGRADED, SERVICE, ("stage",)).items()})


def quantile(q: float, buckets: Buckets) -> float | None:
    """Estimate of the q-quantile from cumulative (upper bound, count) buckets; None when there
    are no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):  # past the last finite bucket: its bound is all we know
                return lower_bound
            inside = count - lower_count
            share = (rank - lower_count) / inside if inside > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _minus(new: Buckets, old: Buckets) -> Buckets:
    before = dict(old)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in new]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def interval(old: Raw, new: Raw) -> dict[str, Any]:
    """What happened between two readings, per second and in milliseconds."""
    dt = max(new.t - old.t, 1e-9)
    served = errors = recs = events = 0.0
    for (route, status), count in new.requests.items():
        n = count - old.requests.get((route, status), 0.0)
        if n <= 0 or route in OPS_ROUTES:
            continue
        served += n
        errors += n if status.startswith("5") else 0.0
        recs += n if route == RECOMMEND_ROUTE else 0.0
        events += n if route == EVENTS_ROUTE else 0.0
    stages = {}
    for stage, buckets in new.stages.items():
        diff = _minus(buckets, old.stages.get(stage, []))
        stages[stage] = {"count": diff[-1][1] if diff else 0.0,
                         "p50_ms": _ms(quantile(0.5, diff)), "p99_ms": _ms(quantile(0.99, diff))}
    rec = _minus(new.recommend, old.recommend)
    degraded = {stage: n - old.degraded.get(stage, 0.0) for stage, n in new.degraded.items()}
    return {"t": round(new.t, 3), "seconds": round(dt, 3),
            "requests_per_s": round(served / dt, 3), "errors_per_s": round(errors / dt, 3),
            "recommendations_per_s": round(recs / dt, 3), "events_per_s": round(events / dt, 3),
            "recommendation_ms": {"p50": _ms(quantile(0.5, rec)), "p99": _ms(quantile(0.99, rec))},
            "stages": stages,
            "degraded": {s: n for s, n in degraded.items() if n > 0},
            "degraded_total": sum(n for n in degraded.values() if n > 0)}


class StatsWindow:
    """A ring of per-interval summaries, filled by `run()` (a task of the gateway's lifespan)."""

    def __init__(self, interval_s: float = 5.0, keep_s: float = 600.0) -> None:
        self.interval_s = interval_s
        self.samples: deque[dict[str, Any]] = deque(maxlen=max(1, int(keep_s / interval_s)))
        self._last: Raw | None = None

    def tick(self, now: float | None = None) -> None:
        raw = read_raw(now)
        if self._last is not None:
            self.samples.append(interval(self._last, raw))
        self._last = raw

    async def run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not take the gateway down
                log.exception("console stats: sampling failed")
            await asyncio.sleep(self.interval_s)

    def as_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s,
                "window_s": self.interval_s * (self.samples.maxlen or 0),
                "samples": list(self.samples)}


@contextlib.asynccontextmanager
async def sampling(window: StatsWindow) -> AsyncIterator[StatsWindow]:
    task = asyncio.create_task(window.run(), name="console-stats")
    try:
        yield window
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
