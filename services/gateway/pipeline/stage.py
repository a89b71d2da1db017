"""Stages, and the one place where failure policy lives.

A stage is a small object with a `name`, `async run(ctx)` that reads and writes the request
context, and `fallback(ctx)` that leaves the context usable when `run` could not finish.
Whether a failure falls back (and is flagged in `degraded`) or fails the request, and how long a
stage may take, is decided by the `Step` wrapping it in config.py, never inside the stage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from prometheus_client import Counter, Histogram

from services.gateway.pipeline.context import RecContext
from shared.errors import DEPENDENCY_ERRORS
from shared.observability import DEGRADED, STAGE_SECONDS

log = logging.getLogger("vidrec.gateway")

class StageFailure(RuntimeError):
    """A stage's dependency answered, but not in a form the stage can use."""


class ScoreMismatch(StageFailure):
    """The ranker returned a different number of scores than candidates it was given."""


# Failures that mean "a dependency is down or slow, or answered unusably": expected in
# production and degraded quietly (shared/errors.py; RedisError: the in-process feature store
# talks to Redis directly).
DEGRADES_QUIETLY: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, StageFailure)


class Stage(Protocol):
    """A pure stage (no I/O: filters, head, sort, select, explain) has only these; a failure
    there is a bug and fails the request."""

    name: str

    async def run(self, ctx: RecContext) -> None: ...


class DegradableStage(Stage, Protocol):
    """A stage that calls a dependency, and can leave the context usable without it."""

    def fallback(self, ctx: RecContext) -> None: ...


@dataclass
class Step:
    """A stage with its policy: a time limit, and whether a failure falls back or fails."""

    stage: Stage
    timeout_s: float | None = None
    fail_open: bool = True
    _seconds: Histogram = field(init=False, repr=False)
    _degraded: Counter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.fail_open and not callable(getattr(self.stage, "fallback", None)):
            raise TypeError(f"stage {self.stage.name!r} fails open but has no fallback")
        self._seconds = STAGE_SECONDS.labels("gateway", self.stage.name)
        self._degraded = DEGRADED.labels("gateway", self.stage.name)

    @property
    def name(self) -> str:
        return self.stage.name

    async def __call__(self, ctx: RecContext) -> None:
        start = time.perf_counter()
        try:
            if self.timeout_s is None:
                await self.stage.run(ctx)
            else:
                await within(self.stage.run(ctx), self.timeout_s)
        except Exception as exc:
            if not self.fail_open:
                raise
            if isinstance(exc, DEGRADES_QUIETLY):
                log.warning("stage %s degraded: %s: %s", self.name, type(exc).__name__,
                            str(exc) or f"no answer within {self.timeout_s} s")
            else:  # a bug, not an outage: still answer, but loudly
                log.exception("stage %s failed unexpectedly; falling back", self.name)
            cast(DegradableStage, self.stage).fallback(ctx)
            ctx.degraded.append(self.name)
            self._degraded.inc()
        finally:
            self._seconds.observe(time.perf_counter() - start)


# A timer that fires this much later than its deadline means the event loop (or the process) was
# busy elsewhere when it was due: the lateness is the queue's, not the stage's.
LATE_TIMER_S = 0.002


async def within(coro: Coroutine[Any, Any, None], timeout_s: float) -> None:
    """Run `coro` with a time limit that measures the stage, not the queue in front of it.

    asyncio.timeout cancels at the first loop iteration after the deadline, even when the
    dependency's answer is already in the socket buffer because the loop was busy with other
    requests (or the process was off the CPU) past the deadline: under load, stages then
    degrade for want of CPU, not because a dependency was slow (issue #10). Here a deadline
    that is noticed late gives the stage that lateness back once (at most timeout_s more), so
    an answer that is already there is used; a dependency that is really slow still times out,
    after at most twice the limit. Costs a task per stage (~10 us).
    """
    task = asyncio.ensure_future(coro)
    deadline = time.perf_counter() + timeout_s
    extended = False
    try:
        while True:
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.perf_counter()))
            if task.done():
                task.result()  # the stage's own exception, if any
                return
            late = time.perf_counter() - deadline
            if extended or late <= LATE_TIMER_S:
                raise TimeoutError
            deadline = time.perf_counter() + min(late, timeout_s)
            extended = True
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let it unwind before the fallback touches ctx


class Pipeline:
    """Runs steps in order over one context."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    async def run(self, ctx: RecContext) -> RecContext:
        for step in self.steps:
            await step(ctx)
        return ctx
