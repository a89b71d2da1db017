"""Admission control: every service refuses work it cannot do in time, fast, instead of queueing.

    add_admission(app, settings, "gateway")      # one line in each service's create_app

A pure ASGI middleware in front of the routes that, per request:

1. reads a request body itself, before anything parses it: a Content-Length above the limit is
   refused with 413 without reading a byte, a body that grows past it with 413, a body trickled
   slower than `body_timeout_s` allows with 408 (the header timeout lives in the server:
   shared/server.py);
2. bounds the requests in flight (`Settings.gateway_max_in_flight`; the internal services get
   `internal_max_in_flight`). Past the bound a request waits for a slot only if
   `admission_queue` > 0 and at most `admission_queue_wait_s`; otherwise it is refused at once
   with 503 + Retry-After. The body is read before a slot is taken, so a slow client never holds
   one. A refused request never reaches the app: a shed event batch has nothing of it applied.
   The gateway may answer a shed recommendation request with a cheap degraded answer instead of
   503 (`shed_recommendations = "popular"`): see `degraded` below.

/healthz, /readyz and /metrics are never limited: a load balancer must see an overloaded
process as alive and ready (it is answering, only refusing extra work quickly). Nor is /admin/
(bundle reloads): see UNLIMITED_PREFIX.

Fixed or adaptive (bench/overload.py, docs/capacity.md): past a few requests in flight a
process's throughput is flat and each extra request only adds its CPU time to everyone's
latency, so the right limit is about (p99 budget / CPU time per request), less the jitter of a
shared host. The default is a fixed 4 in one process: at capacity about 2 requests are in
flight (Little's law on the quiet run: 1.6), so 4 costs little goodput, and 4 x ~6 ms leaves
room in a 50 ms p99 even when a request's CPU time doubles. 8 gave an accepted p99 of 55-95 ms
on a quiet box; the limit sweep put 4 at half the p99 of 8 for 4% less goodput. A gateway that
calls the services over HTTP holds a request mostly while it waits on them: 6 there (at 4 it
refused 10-30% of its capacity's load, at 8 its p99 passed 50 ms; docs/capacity.md).
The right bound over HTTP moved with the machine's speed (6 on a fast night, 4 on a slow
morning), so there it starts at 6 and follows the time a request admitted at the limit takes
(VIDREC_ADMISSION_LIMIT=latency, the default over HTTP: shared/latency_limit.py); the route
tells it which answers were degraded (mark_degraded), so that a failing dependency is not read
as overload. VIDREC_ADMISSION_LIMIT=loop-lag follows event-loop lag (shared/adaptive_limit.py).

A refusal is answered as early as the server allows: body-less requests (recommendations) by
the HTTP protocol itself, before a task exists for them (`Door`, used by shared/server.py);
the rest here, once their body is read.

Hand-written because no maintained ASGI library does this: Starlette has no concurrency
limiter, and uvicorn's `limit_concurrency` counts connections and tasks, health checks
included, and answers 503 without Retry-After or metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Gauge

from shared.adaptive_limit import LoopLagLimit
from shared.latency_limit import LatencyLimit
from shared.settings import Settings
from shared.steps import PAUSE_WHEN

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# An answer for a shed request (e.g. the gateway's popular list), or None to answer 503.
Degraded = Callable[[Scope], Awaitable[tuple[int, bytes] | None]]

NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})
# Operator actions (a bundle reload) are rare, authenticated and may take minutes: refusing them
# under load would stop a fix from being rolled out, and holding a slot that long would shrink
# capacity, so they bypass the bound.
UNLIMITED_PREFIX = "/admin/"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# How long a moving limit stays still after a bundle change has finished (Admission.steady):
# the first requests after a swap run on cold caches and the collector catches up, and
# replicas that follow a rollout by themselves may still be loading. A reload of the
# MicroLens-50k bundle took 1.1-3.6 s (bench/results/reload_under_load*.json).
SETTLE_AFTER_CHANGE_S = 5.0

IN_FLIGHT = Gauge("vidrec_admission_in_flight", "Requests being served now (limited ones).",
                  ["service"], multiprocess_mode="livesum")
WAITING = Gauge("vidrec_admission_waiting", "Requests waiting for a slot (admission queue).",
                ["service"], multiprocess_mode="livesum")
LIMIT = Gauge("vidrec_admission_limit", "Most requests served at once; more are refused.",
              ["service"], multiprocess_mode="liveall")
SHED = Counter("vidrec_admission_shed_total",
               "Requests refused because the service was at its limit, by answer given "
               "(503, or degraded: a cheap flagged answer).", ["service", "answer"])
REFUSED = Counter("vidrec_request_refused_total",
                  "Requests refused before parsing: body too large (413), body too slow (408).",
                  ["service", "status"])


class LimitRule(Protocol):
    """A limit that moves (shared/adaptive_limit.py, shared/latency_limit.py)."""

    limit: int
    on_change: Callable[[int], None]
    # True while the limit must not move (a bundle change: Admission.steady); set by Admission
    held: Callable[[], bool]

    def start(self) -> None: ...

    def saw(self, in_flight: int) -> None: ...

    def done(self, seconds: float, healthy: bool, crowded: bool, alone: bool) -> None: ...


class _Outcome:
    __slots__ = ("degraded",)

    def __init__(self) -> None:
        self.degraded = False


_OUTCOME: ContextVar[_Outcome | None] = ContextVar("vidrec_admission_outcome", default=None)


def mark_degraded() -> None:
    """Tell admission control that this request's answer is degraded (a dependency failed or
    timed out): its time says how slow the dependency was, not how many requests the service
    can hold, so a latency limit does not learn from it (shared/latency_limit.py)."""
    outcome = _OUTCOME.get()
    if outcome is not None:
        outcome.degraded = True


class Admission:
    """The in-flight bound of one service: a counter, not a semaphore, so that refusing costs
    nothing when there is no queue."""

    def __init__(self, service: str, limit: int, queue: int, queue_wait_s: float,
                 adaptive: LimitRule | None = None) -> None:
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.service, self._limit = service, limit
        self.queue, self.queue_wait_s = queue, queue_wait_s
        self.in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._in_flight_gauge = IN_FLIGHT.labels(service)
        self._waiting_gauge = WAITING.labels(service)
        gauge = LIMIT.labels(service)
        gauge.set(limit)
        self.adaptive = adaptive
        self._changes = 0  # bundle changes in progress (steady)
        self._settled_at = 0.0  # perf_counter time after which the limit may move again
        if adaptive is not None:
            adaptive.on_change = gauge.set
            adaptive.held = self.held

    @contextmanager
    def steady(self, settle_s: float = SETTLE_AFTER_CHANGE_S) -> Iterator[None]:
        """Hold a moving limit still while a bundle change runs and for `settle_s` after.
        A reload makes every request slower for a few seconds (loading, cold caches) while
        the answers stay healthy; a latency or loop-lag limit would read that as overload
        and refuse requests the service can serve once the swap is done. A fixed limit is
        unaffected (it never moves)."""
        self._changes += 1
        try:
            yield
        finally:
            self._changes -= 1
            self._settled_at = max(self._settled_at, time.perf_counter() + settle_s)

    def held(self) -> bool:
        return self._changes > 0 or time.perf_counter() < self._settled_at

    @property
    def limit(self) -> int:
        return self.adaptive.limit if self.adaptive is not None else self._limit

    async def acquire(self) -> bool:
        """True with a slot taken; False when the request should be refused."""
        if self.adaptive is not None:
            self.adaptive.start()
            self.adaptive.saw(self.in_flight + 1)
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return True
        if len(self._waiters) >= self.queue:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._waiting_gauge.set(len(self._waiters))
        try:
            async with asyncio.timeout(self.queue_wait_s):
                await waiter  # release() hands its slot over: in_flight already counts us
            return True
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._waiting_gauge.set(len(self._waiters))

    def full(self) -> bool:
        """Whether a request arriving now would be refused: every slot taken (or handed to a
        waiter) and no place left to wait. Feeds the adaptive limit as `acquire` does."""
        if self.adaptive is not None:
            self.adaptive.start()
            self.adaptive.saw(self.in_flight + 1)
        busy = self.in_flight >= self.limit or bool(self._waiters)
        return busy and len(self._waiters) >= self.queue

    def at_limit(self) -> bool:
        """Every slot taken: a request arriving now would be refused (or wait)."""
        return self.in_flight >= self.limit

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        self.in_flight -= 1
        self._in_flight_gauge.set(self.in_flight)

    def finished(self, seconds: float, healthy: bool, crowded: bool, alone: bool) -> None:
        """An admitted request is done (after release): what a moving limit learns from.
        crowded: it took the last free slot; alone: no other request was in flight (both
        as admission saw it right after admitting it)."""
        if self.adaptive is not None:
            self.adaptive.done(seconds, healthy, crowded, alone)

    def _take(self) -> None:
        self.in_flight += 1
        self._in_flight_gauge.set(self.in_flight)


class BodyTooLarge(Exception):
    pass


def limited(path: str) -> bool:
    """Whether admission control applies to a path (ops and admin routes never wait for it)."""
    return path not in NEVER_SHED and not path.startswith(UNLIMITED_PREFIX)


class Door:
    """The refusal answered by the HTTP protocol itself (shared/server.py), before uvicorn makes
    a task for the request: a 503 written from the connection's data callback costs one turn of
    the event loop, where one written by the middleware waits a second turn behind every task
    already queued (under overload, the loop's queue is the latency of a refusal). Only for
    body-less requests (GET, HEAD: recommendations) answered with 503; a request with a body is
    read first and refused by the middleware, as is any when a degraded answer is configured."""

    METHODS = frozenset({"GET", "HEAD"})

    def __init__(self, admission: Admission, retry_after_s: int) -> None:
        self.admission = admission
        self.retry_after = str(retry_after_s).encode()

    def refuses(self, method: str, path: str) -> bool:
        return method in self.METHODS and limited(path) and self.admission.full()

    def answer(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Headers and body of the 503, counted as shed."""
        SHED.labels(self.admission.service, "503").inc()
        body = _shed_body(self.admission)
        return [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", self.retry_after)], body


def _shed_body(admission: Admission) -> bytes:
    return orjson.dumps({"detail": f"{admission.service} is at its limit of {admission.limit} "
                                   "requests in flight; retry shortly"})


def door_of(app: Any) -> Door | None:
    """The Door of the app uvicorn serves (through any wrapping middleware), if it has one."""
    for _ in range(8):
        state = getattr(app, "state", None)
        door: Door | None = getattr(state, "admission_door", None) if state is not None \
            else None
        if door is not None:
            return door
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, service: str, limit: int, queue: int = 0,
                 queue_wait_s: float = 0.0, max_body_bytes: int, body_timeout_s: float,
                 retry_after_s: int = 1, degraded: Degraded | None = None,
                 adaptive: LimitRule | None = None,
                 admission: Admission | None = None) -> None:
        self.app = app
        self.service = service
        # `admission`: shared with the protocol's Door (add_admission); else one of its own.
        self.admission = admission or Admission(service, limit, queue, queue_wait_s, adaptive)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.retry_after = str(retry_after_s).encode()
        self.degraded = degraded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not limited(path):
            await self.app(scope, receive, send)
            return
        if scope["method"] in BODY_METHODS:
            replay = await self._read_body(scope, receive, send)
            if replay is None:
                return  # already answered (413/408) or the client went away
            receive = replay
        if not await self.admission.acquire():
            await self._shed(scope, send)
            return
        paused = PAUSE_WHEN.set(self.admission.at_limit)  # in this request's task only
        outcome = _Outcome()
        told = _OUTCOME.set(outcome)
        healthy = False
        crowded, alone = self.admission.at_limit(), self.admission.in_flight == 1
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
            healthy = not outcome.degraded
        finally:
            _OUTCOME.reset(told)
            PAUSE_WHEN.reset(paused)
            self.admission.release()
            self.admission.finished(time.perf_counter() - started, healthy, crowded, alone)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send, 413, f"request body of {declared} bytes is over the "
                                          f"limit of {self.max_body_bytes} bytes")
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise BodyTooLarge
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except BodyTooLarge:
            await self._refuse(send, 413, f"request body is over the limit of "
                                          f"{self.max_body_bytes} bytes")
            return None
        except TimeoutError:
            await self._refuse(send, 408, f"request body not received within "
                                          f"{self.body_timeout_s:g} s")
            return None
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for the disconnect as usual

        return replay

    async def _refuse(self, send: Send, status: int, why: str) -> None:
        REFUSED.labels(self.service, str(status)).inc()
        # The rest of a refused body is never read: close the connection after answering.
        await _send_json(send, status, {"detail": why}, [(b"connection", b"close")])

    async def _shed(self, scope: Scope, send: Send) -> None:
        if self.degraded is not None:
            answer = await self.degraded(scope)
            if answer is not None:
                SHED.labels(self.service, "degraded").inc()
                status, body = answer
                await _send(send, status, body, [])
                return
        SHED.labels(self.service, "503").inc()
        await _send(send, 503, _shed_body(self.admission), [(b"retry-after", self.retry_after)])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, content: dict[str, Any], headers: list[Any]) -> None:
    await _send(send, status, orjson.dumps(content), headers)


async def _send(send: Send, status: int, body: bytes, headers: list[Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


def add_admission(app: Any, settings: Settings, service: str,
                  degraded: Degraded | None = None) -> None:
    """Install admission control and body limits on a FastAPI app (outermost middleware)."""
    public = service == "gateway"
    limit = settings.gateway_max_in_flight() if public else settings.internal_max_in_flight
    adaptive = limit_rule(settings, limit) if public else None
    admission = Admission(service, limit, settings.admission_queue,
                          settings.admission_queue_wait_s, adaptive)
    degraded = degraded if settings.shed_recommendations == "popular" else None
    # The protocol refuses body-less requests itself when it can (Door); not when a degraded
    # answer is configured (that one is built by the app).
    app.state.admission = admission  # the gateway holds its limit still during reloads
    app.state.admission_door = (Door(admission, settings.shed_retry_after_s)
                                if degraded is None and settings.admission_at_door else None)
    app.add_middleware(
        AdmissionMiddleware, service=service, adaptive=adaptive, limit=limit,
        queue=settings.admission_queue, queue_wait_s=settings.admission_queue_wait_s,
        max_body_bytes=settings.max_body_bytes if public else settings.internal_max_body_bytes,
        body_timeout_s=settings.body_timeout_s, retry_after_s=settings.shed_retry_after_s,
        degraded=degraded, admission=admission)


def limit_rule(settings: Settings, limit: int) -> LimitRule | None:
    """The gateway's moving limit, if settings ask for one, starting from `limit`. Only the
    gateway's limit moves: the internal services are fed by gateways that are bounded already,
    and a shrinking internal bound would only turn the gateway's answers degraded."""
    rule = settings.admission_rule()
    if rule == "loop-lag":
        return LoopLagLimit(limit, settings.admission_min_in_flight,
                            settings.admission_target_lag_s)
    if rule == "latency":
        return LatencyLimit(limit, min(settings.admission_min_in_flight, limit),
                            max(settings.admission_ceiling, limit),
                            settings.admission_target_latency_s)
    return None
