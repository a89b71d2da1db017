"""`vidrec archive`: the archiver process. It copies the events stream and the impressions
stream into the event log (services/archiver/eventlog.py) through one consumer group each,
and serves /healthz, /readyz (Redis reachable, the log writable, no failing batch) and
/metrics (lag, archived/duplicate/lost counts)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.archiver.consumer import ArchiverConfig, StreamArchiver
from services.archiver.eventlog import EVENTS, IMPRESSIONS, EventLog
from services.feature_store.keys import Keys
from shared.observability import add_ops_routes
from shared.redis_conn import AsyncRedis, make_redis
from shared.settings import Settings

log = logging.getLogger("vidrec.archiver")


def make_archivers(settings: Settings, redis: AsyncRedis,
                   eventlog: EventLog) -> list[StreamArchiver]:
    keys = Keys(settings.key_prefix, settings.events_stream)
    prefix = settings.key_prefix
    base = ArchiverConfig(
        consumer=settings.archive_consumer or socket.gethostname(),
        batch=settings.archive_batch, block_ms=settings.archive_block_ms,
        linger_ms=settings.archive_linger_ms,
        claim_idle_ms=int(settings.archive_claim_idle_s * 1000),
        pause_before_ack_s=settings.archive_pause_before_ack_s)
    # markers live in the user's slot (docs/feature_store.md): cheap on a cluster, and gone
    # with the dedupe window; a batch entry written "once" has one marker for all its events
    events = StreamArchiver(
        redis, eventlog, EVENTS, keys.events,
        lambda f: f"{prefix}:{{u:{f.get('user_id', '')}}}:arch:ev:{f.get('event_id', '')}",
        ArchiverConfig(**{**base.__dict__, "marker_ttl_s": settings.event_dedupe_ttl_s}),
        entry_marker=lambda sid: f"{prefix}:arch:ev-entry:{sid}")
    impressions = StreamArchiver(
        redis, eventlog, IMPRESSIONS, f"{prefix}:{settings.impressions_stream}",
        lambda f: f"{prefix}:{{u:{f.get('user_id', '')}}}:arch:imp:{f.get('request_id', '')}",
        ArchiverConfig(**{**base.__dict__, "marker_ttl_s": max(settings.impression_ttl_s,
                                                                86_400)}))
    return [events, impressions]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = make_redis(settings, socket_timeout_s=settings.archive_block_ms / 1000 + 5)
        eventlog = EventLog(settings.event_log)
        archivers = make_archivers(settings, redis, eventlog)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop), name=f"archive-{a.label}")
                 for a in archivers]
        app.state.archivers, app.state.redis = archivers, redis
        log.info("archiver: %s -> %s", ", ".join(a.stream for a in archivers),
                 eventlog.location)
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
            await redis.aclose()

    app = FastAPI(title="vidrec archiver", lifespan=lifespan)

    async def readiness() -> dict[str, Any]:
        archivers: list[StreamArchiver] = getattr(app.state, "archivers", [])
        try:
            redis_ok = bool(await asyncio.wait_for(app.state.redis.ping(), 1.0))
        except Exception:
            redis_ok = False
        streams = {a.label: {"stream": a.stream, "last_error": a.last_error,
                             "last_batch_at": a.last_batch_at} for a in archivers}
        ok = redis_ok and bool(archivers) and all(a.last_error is None for a in archivers)
        return {"ready": ok, "service": "archiver", "redis": redis_ok,
                "event_log": settings.event_log, "streams": streams}

    add_ops_routes(app, readiness)
    return app
