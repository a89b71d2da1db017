"""An in-flight limit that follows how busy the CPU is, measured as event-loop lag.

Why (bench/results/overload.json, `limit_sweep_3x`): past a few requests in flight a process's
throughput is flat and every extra request only adds its CPU time to everyone's latency, so the
limit that keeps p99 within budget is (budget / CPU time per request). That CPU time is not a
constant: on the shared 2-core box it went from ~6 ms (quiet) to ~25 ms (neighbours busy), and a
fixed limit of 8 that is right for the first gave a p99 of 216 ms in the second.

Signal: a timer every PROBE_S on the service's own loop; how late it fires is the queue of work
in front of the CPU (our requests' synchronous parts, and other processes taking the cores).
Waiting on a slow dependency costs no CPU and adds no lag, so a slow Redis does not shrink the
limit (the stage timers deal with it) - unlike a limit driven by request latency.

Control (AIMD, as TCP and Netflix's concurrency-limits do): every WINDOW_S, if the mean lag is
over `target_lag_s` the limit is cut by a quarter (not below `floor`); if it is under half the
target and the limit was reached in the window, it grows by one (not above `ceiling`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PROBE_S = 0.005
WINDOW_S = 0.1
DECREASE = 0.75


class LoopLagLimit:
    def __init__(self, ceiling: int, floor: int, target_lag_s: float,
                 on_change: Callable[[int], None] = lambda _: None) -> None:
        self.ceiling, self.floor = ceiling, min(floor, ceiling)
        self.target_lag_s = target_lag_s
        self.limit = ceiling
        self.on_change = on_change
        self.held: Callable[[], bool] = lambda: False  # a bundle change: Admission.steady
        self.peak = 0  # most requests in flight in this window
        self._lag_sum = 0.0
        self._ticks = 0
        self._window_start = 0.0
        self._started = False

    def start(self) -> None:
        """Start probing on the running loop (once; from the first request)."""
        if self._started:
            return
        self._started = True
        self._window_start = time.perf_counter()
        self._schedule(asyncio.get_running_loop())

    def saw(self, in_flight: int) -> None:
        if in_flight > self.peak:
            self.peak = in_flight

    def done(self, seconds: float, healthy: bool, crowded: bool, alone: bool) -> None:
        """Request times say nothing here: the loop's lag is the signal."""

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = time.perf_counter() + PROBE_S
        loop.call_later(PROBE_S, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = time.perf_counter()
        self._lag_sum += max(0.0, now - due)
        self._ticks += 1
        if now - self._window_start >= WINDOW_S:
            self._adjust(self._lag_sum / self._ticks)
            self._lag_sum, self._ticks, self.peak = 0.0, 0, 0
            self._window_start = now
        if not loop.is_closed():
            self._schedule(loop)

    def _adjust(self, mean_lag: float) -> None:
        if self.held():  # loading a bundle lags the loop for a while; not overload
            return
        limit = self.limit
        if mean_lag > self.target_lag_s:
            limit = max(self.floor, min(limit - 1, int(limit * DECREASE)))
        elif mean_lag < self.target_lag_s / 2 and self.peak >= limit:
            limit = min(self.ceiling, limit + 1)
        if limit != self.limit:
            self.limit = limit
            self.on_change(limit)
