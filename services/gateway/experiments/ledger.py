"""Impressions, attribution and per-arm counters, all in Redis so that every gateway replica
writes to, and reports from, the same numbers.

Per answer (`add_answer`; buffered and written in one pipeline every flush_interval_s, off the
request path, which costs a quarter of the CPU of a pipeline per answer):
  XADD  <prefix>:impressions      request id, user, experiment, arm, model version, item ids
                                  (position = index in the list), time: the durable log
  SET   <prefix>:imp:<request id> what attribution needs (user, arm, time, the first ctr_k
                                  item ids) as one JSON list, for counted answers only;
                                  expires after impression_ttl_s
  HINCRBY/PFADD per-arm counters  <prefix>:exp:<experiment>:<arm>:{c,lat,items}

Per event carrying a request_id (`attribute`, after the feature store accepted the batch):
  - the impression must exist (not expired; this process's buffer is flushed first, and a
    missing one is looked up once more RECHECK_S later) and belong to the same user;
  - once per (user, event id): a marker SET NX makes retried and duplicated events count once,
    whatever the feature store said about them;
  - the event counts for the impression's arm (plays, completions, likes, skips, dislikes,
    watch fraction); a play (view or complete) of an item shown at a position < ctr_k within
    attribution_window_s of the impression marks the impression as clicked, once (a SET NX
    marker), for CTR@k. A play after the window is counted as `late` and not in CTR.
Events without a request_id still update the user (feature store) but are not attributed.
Impressions forced by the QA header are logged but kept out of every counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter, Histogram

from services.gateway.experiments.assignment import Assignment
from shared.contracts import Event
from shared.redis_conn import AsyncPipeline, AsyncRedis, as_fields

log = logging.getLogger("vidrec.gateway")

# Per-arm latency histogram in Redis: bucket i holds latencies in (L0 * G**(i-1), L0 * G**i],
# so a quantile read back is within 10% (G) of the true one.
LAT_L0_S = 1e-4
LAT_GROWTH = 1.1
LAT_BUCKETS = 150  # up to ~0.1 ms * 1.1**150 = 160 s
FLUSH_TIMEOUT_S = 2.0
ATTRIBUTE_TIMEOUT_S = 5.0
RECHECK_S = 0.05  # an event's impression not in Redis yet: look once more after this long
CLOCK_SKEW_S = 300.0  # a play stamped up to this long before its impression still counts
PLAY_TYPES = frozenset({"view", "complete"})
COUNTER_OF = {"view": "plays", "complete": "completions", "like": "likes", "skip": "skips",
              "dislike": "dislikes"}
COUNTERS = ("impressions", "clicked", "plays", "completions", "likes", "skips", "dislikes",
            "late", "errors", "degraded", "wf_n", "wf_sum", "wf_sumsq")

ARM_REQUESTS = Counter("vidrec_experiment_requests_total",
                       "Recommendation answers per experiment arm, by outcome.",
                       ["experiment", "arm", "outcome"])
ARM_EVENTS = Counter("vidrec_experiment_events_total",
                     "Events attributed to an experiment arm, by type.",
                     ["experiment", "arm", "type"])
ARM_CLICKED = Counter("vidrec_experiment_clicked_impressions_total",
                      "Impressions with a play at a position < ctr_k within the window "
                      "(CTR@k = this / impressions).", ["experiment", "arm"])
ARM_SECONDS = Histogram("vidrec_experiment_request_seconds",
                        "Recommendation latency per experiment arm.", ["experiment", "arm"],
                        buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2,
                                 0.5, 1.0, 2.0))
ATTRIBUTION = Counter("vidrec_attribution_total",
                      "Events with a request_id, by attribution outcome.", ["outcome"])
IMPRESSIONS_LOST = Counter("vidrec_impressions_lost_total",
                           "Answers whose impression could not be written to Redis.")


def latency_bucket(seconds: float) -> int:
    if seconds <= LAT_L0_S:
        return 0
    return min(LAT_BUCKETS, math.ceil(math.log(seconds / LAT_L0_S, LAT_GROWTH) - 1e-9))


def bucket_upper_s(i: int) -> float:
    return LAT_L0_S * LAT_GROWTH ** i


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: str
    user_id: str
    assignment: Assignment | None
    ctr_k: int
    items: tuple[str, ...]
    model_version: str
    latency_s: float
    degraded: bool
    now: float


@dataclass(frozen=True)
class ArmCounts:
    counts: dict[str, float]
    latency_buckets: dict[int, int]
    distinct_items: int

    def get(self, name: str) -> float:
        return self.counts.get(name, 0.0)


def _request_id(e: Event) -> str:
    """The answer an event reacts to: attribution only reads events that name one."""
    if e.request_id is None:
        raise ValueError(f"event {e.event_id} names no request_id")
    return e.request_id


class Ledger:
    def __init__(self, redis: AsyncRedis, prefix: str, *, stream: str = "impressions",
                 stream_maxlen: int = 1_000_000, impression_ttl_s: int = 10_800,
                 window_s: float = 1800.0, dedupe_ttl_s: int = 7 * 86_400,
                 flush_interval_s: float = 0.01, max_buffered: int = 50_000) -> None:
        self.redis = redis
        self.prefix = prefix
        self.stream = f"{prefix}:{stream}"
        self.stream_maxlen = stream_maxlen
        self.impression_ttl_s = impression_ttl_s
        self.window_s = window_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self._buffer: list[Answer | tuple[Assignment, float]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # attributions in flight

    # ---- keys ----------------------------------------------------------------------------
    def impression_key(self, request_id: str) -> str:
        return f"{self.prefix}:imp:{request_id}"

    def played_key(self, request_id: str) -> str:
        return f"{self.prefix}:imp:{request_id}:played"

    def arm_key(self, experiment: str, arm: str, kind: str) -> str:
        return f"{self.prefix}:exp:{experiment}:{arm}:{kind}"

    def marker_key(self, user_id: str, event_id: str) -> str:
        return f"{self.prefix}:attr:{user_id}:{event_id}"

    # ---- answers (buffered: one pipeline per flush, not per answer) ------------------------
    def add_answer(self, answer: Answer) -> None:
        """Queue an answer's impression and counters; written within flush_interval_s."""
        self._queue(answer)

    def add_error(self, assignment: Assignment, latency_s: float) -> None:
        if not assignment.forced:
            self._queue((assignment, latency_s))

    def _queue(self, item: Answer | tuple[Assignment, float]) -> None:
        if len(self._buffer) >= self.max_buffered:  # Redis has been away for a while
            IMPRESSIONS_LOST.inc()
            return
        self._buffer.append(item)
        self._wake.set()

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-flush")

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_interval_s)  # gather what arrives meanwhile
            await self.flush()

    async def flush(self) -> None:
        self._wake.clear()
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        pipe = self.redis.pipeline(transaction=False)
        for item in batch:
            if isinstance(item, Answer):
                self._write_answer(pipe, item)
            else:
                self._write_error(pipe, *item)
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                await pipe.execute()
        except Exception as exc:  # Redis down or slow: the answers were already sent
            IMPRESSIONS_LOST.inc(len(batch))
            log.warning("ledger: %d impression(s) not recorded: %s: %s", len(batch),
                        type(exc).__name__, exc)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=ATTRIBUTE_TIMEOUT_S)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()  # the last impressions

    def _write_answer(self, pipe: AsyncPipeline, a: Answer) -> None:
        exp, arm = (a.assignment.experiment, a.assignment.arm) if a.assignment else ("", "")
        forced = bool(a.assignment and a.assignment.forced)
        record = {"request_id": a.request_id, "user_id": a.user_id, "experiment": exp,
                  "arm": arm, "model_version": a.model_version,
                  "items": orjson.dumps(list(a.items)).decode(), "timestamp": repr(a.now),
                  "ctr_k": str(a.ctr_k), "forced": "1" if forced else "0"}
        pipe.xadd(self.stream, as_fields(record), maxlen=self.stream_maxlen, approximate=True)
        if exp and not forced:
            # Only what attribution reads, and only for answers it counts (the stream has the
            # rest): this key per answer is most of the ledger's memory (docs/experiments.md).
            pipe.set(self.impression_key(a.request_id),
                     orjson.dumps([a.user_id, exp, arm, a.now, a.ctr_k, list(a.items[:a.ctr_k])]),
                     ex=self.impression_ttl_s)
            counts = self.arm_key(exp, arm, "c")
            pipe.hincrby(counts, "impressions", 1)
            if a.degraded:
                pipe.hincrby(counts, "degraded", 1)
            pipe.hincrby(self.arm_key(exp, arm, "lat"), str(latency_bucket(a.latency_s)), 1)
            if a.items:
                pipe.pfadd(self.arm_key(exp, arm, "items"), *a.items)

    def _write_error(self, pipe: AsyncPipeline, assignment: Assignment, latency_s: float
                     ) -> None:
        exp, arm = assignment.experiment, assignment.arm
        pipe.hincrby(self.arm_key(exp, arm, "c"), "errors", 1)
        pipe.hincrby(self.arm_key(exp, arm, "lat"), str(latency_bucket(latency_s)), 1)

    # ---- events --------------------------------------------------------------------------
    def attribute_soon(self, events: Sequence[Event]) -> None:
        """Attribute in the background: the events are already recorded, and the answer to
        POST /v1/events must not wait for (or fail on) the experiment's bookkeeping."""
        tracked = [e for e in events if e.request_id]
        if tracked:
            task = asyncio.create_task(self._attribute_logged(tracked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attribute_logged(self, events: list[Event]) -> None:
        try:
            async with asyncio.timeout(ATTRIBUTE_TIMEOUT_S):
                await self.attribute(events)
        except Exception as exc:  # Redis down or slow: counted and logged, never raised
            ATTRIBUTION.labels("error").inc(len(events))
            log.warning("ledger: %d event(s) not attributed: %s: %s", len(events),
                        type(exc).__name__, exc)

    async def attribute(self, events: Sequence[Event]) -> dict[str, int]:
        """Count events with a request_id for their impression's arm; returns outcome counts."""
        tracked = [e for e in events if e.request_id]
        outcome = {"attributed": 0, "duplicate": 0, "no_impression": 0, "late": 0}
        if not tracked:
            return outcome
        if self._buffer:  # an impression this process has not written yet
            await self.flush()
        impressions = await self._impressions(tracked)
        missing = [i for i, imp in enumerate(impressions) if imp is None]
        if missing:  # perhaps buffered by another replica, a few ms from Redis: look again
            await asyncio.sleep(RECHECK_S)
            for i, imp in zip(missing, await self._impressions([tracked[i] for i in missing]),
                              strict=True):
                impressions[i] = imp
        known = [(e, imp) for e, imp in zip(tracked, impressions, strict=True)
                 if imp is not None and imp["user_id"] == e.user_id]
        outcome["no_impression"] = len(tracked) - len(known)
        pipe = self.redis.pipeline(transaction=False)
        for e, _ in known:
            pipe.set(self.marker_key(e.user_id, e.event_id), "1", nx=True, ex=self.dedupe_ttl_s)
        fresh = await pipe.execute() if known else []
        clicks: list[tuple[Event, dict[str, Any]]] = []
        incr = self.redis.pipeline(transaction=False)
        for (e, imp), new in zip(known, fresh, strict=True):
            if not new:
                outcome["duplicate"] += 1
                continue
            outcome["attributed"] += 1
            exp, arm = imp["experiment"], imp["arm"]
            counts = self.arm_key(exp, arm, "c")
            counter = COUNTER_OF.get(e.type)
            if counter:
                incr.hincrby(counts, counter, 1)
                ARM_EVENTS.labels(exp, arm, e.type).inc()
            if e.type not in PLAY_TYPES:
                continue
            if e.watch_fraction > 0:
                incr.hincrby(counts, "wf_n", 1)
                incr.hincrbyfloat(counts, "wf_sum", e.watch_fraction)
                incr.hincrbyfloat(counts, "wf_sumsq", e.watch_fraction ** 2)
            delta = e.timestamp - imp["timestamp"]
            if delta > self.window_s:
                outcome["late"] += 1
                incr.hincrby(counts, "late", 1)
                continue
            position = _position(e, imp["items"])
            if delta >= -CLOCK_SKEW_S and position is not None and position < imp["ctr_k"]:
                clicks.append((e, imp))
        if clicks:  # the first qualifying play of an impression makes it "clicked"
            first = self.redis.pipeline(transaction=False)
            for e, _ in clicks:
                first.set(self.played_key(_request_id(e)), e.event_id, nx=True,
                          ex=self.impression_ttl_s)
            for (_, imp), new in zip(clicks, await first.execute(), strict=True):
                if new:
                    incr.hincrby(self.arm_key(imp["experiment"], imp["arm"], "c"), "clicked", 1)
                    ARM_CLICKED.labels(imp["experiment"], imp["arm"]).inc()
        await incr.execute()
        for name, n in outcome.items():
            if n:
                ATTRIBUTION.labels(name).inc(n)
        return outcome

    async def _impressions(self, events: Sequence[Event]) -> list[dict[str, Any] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for e in events:
            pipe.get(self.impression_key(_request_id(e)))
        return [_impression(packed) for packed in await pipe.execute()]

    # ---- reading back --------------------------------------------------------------------
    async def arm_counts(self, experiment: str, arms: Sequence[str]) -> dict[str, ArmCounts]:
        pipe = self.redis.pipeline(transaction=False)
        for arm in arms:
            pipe.hgetall(self.arm_key(experiment, arm, "c"))
            pipe.hgetall(self.arm_key(experiment, arm, "lat"))
            pipe.pfcount(self.arm_key(experiment, arm, "items"))
        replies = await pipe.execute()
        out = {}
        for i, arm in enumerate(arms):
            counts, lat, distinct = replies[3 * i: 3 * i + 3]
            out[arm] = ArmCounts(
                counts={_s(k): float(v) for k, v in counts.items()},
                latency_buckets={int(_s(k)): int(v) for k, v in lat.items()},
                distinct_items=int(distinct))
        return out


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _impression(packed: bytes | str | None) -> dict[str, Any] | None:
    if packed is None:
        return None  # expired, never written, or not counted (forced, outside experiments)
    user, exp, arm, ts, ctr_k, items = orjson.loads(packed)
    return {"user_id": user, "experiment": exp, "arm": arm, "items": items,
            "timestamp": float(ts), "ctr_k": int(ctr_k)}


def _position(event: Event, items: list[str]) -> int | None:
    """Where the event's item was shown among the first ctr_k: the event's own position when
    it agrees with the impression, else the item's place in it; None when not there."""
    p = event.position
    if p is not None and 0 <= p < len(items) and items[p] == event.item_id:
        return p
    try:
        return items.index(event.item_id)
    except ValueError:
        return None
