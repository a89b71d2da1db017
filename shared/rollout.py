"""Rollout: which bundle every replica serves, held in Redis (docs/learning_loop.md).

    P:bundle:active     string   the version every replica should serve
    P:bundle:history    list     versions promoted before, newest first (for `vidrec rollback`)
    P:bundle:notices    channel  a version, published when the active one changes

Each gateway, retrieval and ranking process runs a `RolloutFollower`: it listens on the channel
and also reads the key every `rollout_check_s` (a missed notice, a Redis restart, a replica that
started late). When the key names a version it does not serve, it loads that bundle beside the
one serving and swaps (the services' own `reload`, which is atomic), retrying a failed version
only after `rollout_retry_s`. A replica that cannot load keeps serving the old bundle and says
so on /readyz (`rollout.error`) and /metrics (`vidrec_rollout_behind` = 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from shared.redis_conn import AsyncRedis, SyncRedis, text
from shared.settings import Settings

log = logging.getLogger("vidrec.rollout")

BEHIND = Gauge("vidrec_rollout_behind",
               "1 while this process serves another bundle than the active one.", ["service"])
SERVING = Gauge("vidrec_rollout_serving_info", "The bundle this process serves (value 1).",
                ["service", "version"])
SWAPS = Counter("vidrec_rollout_swaps_total", "Bundle changes by outcome.",
                ["service", "outcome"])


class RolloutKeys:
    def __init__(self, prefix: str) -> None:
        self.active = f"{prefix}:bundle:active"
        self.history = f"{prefix}:bundle:history"
        self.channel = f"{prefix}:bundle:notices"


async def active_version(redis: AsyncRedis, prefix: str) -> str | None:
    return text(await redis.get(RolloutKeys(prefix).active))


async def promote(redis: AsyncRedis, prefix: str, version: str) -> str | None:
    """Make `version` the active bundle of every replica; returns the one it replaces."""
    keys = RolloutKeys(prefix)
    previous = text(await redis.set(keys.active, version, get=True))
    if previous and previous != version:
        await redis.lpush(keys.history, previous)
        await redis.ltrim(keys.history, 0, 99)
    await redis.publish(keys.channel, version)
    return previous


def promote_sync(redis: SyncRedis, prefix: str, version: str) -> str | None:
    """`promote` for a synchronous client (`vidrec load`, which makes the bundle whose users
    and items it wrote the active one)."""
    keys = RolloutKeys(prefix)
    previous = text(redis.set(keys.active, version, get=True))
    if previous and previous != version:
        redis.lpush(keys.history, previous)
        redis.ltrim(keys.history, 0, 99)
    redis.publish(keys.channel, version)
    return previous


async def rollback(redis: AsyncRedis, prefix: str) -> str:
    """Make the previously active bundle active again; returns it. LookupError when there is
    no earlier version."""
    keys = RolloutKeys(prefix)
    previous = text(await redis.lpop(keys.history))
    if previous is None:
        raise LookupError("no earlier bundle to roll back to (nothing was promoted before)")
    await redis.set(keys.active, previous)
    await redis.publish(keys.channel, previous)
    return previous


class RolloutFollower:
    """Follows the active version for one process. `load(version)` swaps the bundle in (raises
    when it cannot); `serving()` names the one serving now."""

    def __init__(self, settings: Settings, service: str,
                 load: Callable[[str], Awaitable[Any]], serving: Callable[[], str | None],
                 redis_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.service = service
        self.keys = RolloutKeys(settings.key_prefix)
        self._load = load
        self._serving = serving
        self._redis_factory = redis_factory
        self.target: str | None = None
        self.error: str | None = None
        self._failed: dict[str, float] = {}  # version -> when it failed
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._redis: Any = None
        self._labelled: str | None = None
        BEHIND.labels(service).set(0)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._redis_factory is None:
            from shared.redis_conn import make_redis

            self._redis = make_redis(self.settings)
        else:
            self._redis = self._redis_factory()
        self._task = asyncio.create_task(self._run(), name=f"rollout-{self.service}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    def status(self) -> dict[str, Any]:
        serving = self._serving()
        return {"active": self.target, "serving": serving,
                "following": self.target is None or self.target == serving,
                "error": self.error}

    # ---- following -----------------------------------------------------------------------
    async def check(self) -> None:
        """Read the key; load its version when it differs from the one serving."""
        async with self._lock:
            target = await self._redis.get(self.keys.active)
            serving = self._serving()
            if target is None and serving:
                # nothing promoted yet: what this replica was started with becomes the active
                # version (first one wins), so that every replica agrees and a later promotion
                # can be rolled back to it
                await self._redis.set(self.keys.active, serving, nx=True)
                target = await self._redis.get(self.keys.active)
            self.target = target
            self._mark(serving)
            if target is None or target == serving:
                self.error = None
                return
            failed_at = self._failed.get(target)
            if failed_at is not None and time.monotonic() - failed_at < \
                    self.settings.rollout_retry_s:
                return
            started = time.perf_counter()
            try:
                await self._load(target)
            except Exception as exc:  # keep serving the old bundle, and say so
                self._failed[target] = time.monotonic()
                self.error = f"cannot load {target}: {type(exc).__name__}: {exc}"[:500]
                SWAPS.labels(self.service, "failed").inc()
                log.error("%s: rollout to %s failed, still serving %s: %s", self.service,
                          target, serving, self.error)
            else:
                self._failed.pop(target, None)
                self.error = None
                SWAPS.labels(self.service, "ok").inc()
                log.info("%s: now serving %s (was %s; %.2f s)", self.service, target, serving,
                         time.perf_counter() - started)
            self._mark(self._serving())

    async def announce(self, version: str) -> None:
        """An operator loaded `version` on this replica (/admin/reload): make every replica
        follow. The key already naming it changes nothing."""
        if await self._redis.get(self.keys.active) != version:
            await promote(self._redis, self.settings.key_prefix, version)

    def _mark(self, serving: str | None) -> None:
        if self._labelled and self._labelled != serving:
            with contextlib.suppress(KeyError):
                SERVING.remove(self.service, self._labelled)
        if serving:
            SERVING.labels(self.service, serving).set(1)
        self._labelled = serving
        BEHIND.labels(self.service).set(
            1 if self.target is not None and serving != self.target else 0)

    async def _run(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            while True:
                try:
                    await self.check()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis away: the periodic check tries again
                    log.warning("%s: rollout check failed: %r", self.service, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.rollout_check_s)
                self._wake.clear()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.channel)
                self._wake.set()  # (re)subscribed: a notice may have been missed meanwhile
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("%s: rollout notices: %r; resubscribing", self.service, exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


@contextlib.asynccontextmanager
async def following(app: Any, settings: Settings, service: str,
                    load: Callable[[str], Awaitable[Any]],
                    serving: Callable[[], str | None]) -> AsyncIterator[RolloutFollower | None]:
    """Run a follower for the app's lifetime (`app.state.rollout`); none when
    `rollout_follow` is off."""
    if not settings.rollout_follow:
        app.state.rollout = None
        yield None
        return
    follower = RolloutFollower(settings, service, load, serving)
    follower.start()
    app.state.rollout = follower
    try:
        yield follower
    finally:
        await follower.close()


async def announce(app: Any, version: str) -> None:
    follower: RolloutFollower | None = getattr(app.state, "rollout", None)
    if follower is not None:
        await follower.announce(version)


def rollout_status(app: Any) -> dict[str, Any] | None:
    follower: RolloutFollower | None = getattr(app.state, "rollout", None)
    return follower.status() if follower is not None else None
