"""An in-flight limit that keeps the time an admitted request takes near a target (Little's law).

Why (bench/results/overload_four_bounds_slow.json against overload_four_limit6.json): past
saturation a service's throughput X is flat, so a bound of L requests in flight makes each of
them take about L / X. The bound that holds a request's time at a target T is T x X, and X is
not a constant: the same VM served four services at ~220 req/s one night and ~140 the next
morning, where 6 and 4 were the bounds that met a 50 ms p99. This limit measures instead of
assuming. Unlike the loop-lag limit (shared/adaptive_limit.py) it sees the time a gateway spends
waiting on the services behind it, which is where a four-service gateway's requests spend it.

Rule, once per WINDOW_S in which the limit was binding (an arrival found every slot taken):

    limit <- limit x T / (mean time of the healthy requests completed in the window)

the factor bounded to [MIN_STEP, MAX_STEP] and the limit to [floor, ceiling]. With the service
saturated the mean time is limit / X, so this is T x X; when bursts, not a full service, hit the
limit, the mean time is under T and the limit grows. It must not:
- shrink because a dependency fails: such a request is bounded by a stage timer and answered
  degraded, and shedding would only turn degraded answers into 503s. A window in which more than
  UNHEALTHY_SHARE of the requests were degraded (mark_degraded in shared/admission.py) or failed
  leaves the limit as it is;
- move on noise: a window needs MIN_SAMPLES healthy completions, and one without a refusal leaves
  the limit alone (it did not matter).
Hand-written: no maintained Python library bounds concurrency on a latency target (Netflix's
concurrency-limits, whose gradient rule this resembles, is Java).
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_S = 0.25
MIN_SAMPLES = 10
UNHEALTHY_SHARE = 0.1
MIN_STEP, MAX_STEP = 0.5, 1.5


class LatencyLimit:
    def __init__(self, start: int, floor: int, ceiling: int, target_s: float,
                 on_change: Callable[[int], None] = lambda _: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor} ceiling={ceiling}")
        if target_s <= 0:
            raise ValueError(f"target latency must be > 0, got {target_s}")
        self.floor, self.ceiling, self.target_s = floor, ceiling, target_s
        self._value = float(min(max(start, floor), ceiling))  # kept fractional between windows
        self.limit = round(self._value)
        self.on_change = on_change
        self._clock = clock
        self._window_start: float | None = None
        self._binding = 0  # arrivals that found every slot taken
        self._healthy = 0
        self._healthy_s = 0.0
        self._unhealthy = 0
        self.healthy_total = self.unhealthy_total = 0  # what it learned from, and did not

    def start(self) -> None:
        """Nothing to start: windows close on the requests' own events."""

    def saw(self, in_flight: int) -> None:
        """An arrival that would make `in_flight` requests (itself included)."""
        if in_flight > self.limit:
            self._binding += 1
        self._roll()

    def done(self, seconds: float, healthy: bool) -> None:
        """A request admitted `seconds` ago has finished; unhealthy: degraded or failed."""
        if healthy:
            self._healthy += 1
            self._healthy_s += seconds
            self.healthy_total += 1
        else:
            self._unhealthy += 1
            self.unhealthy_total += 1
        self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if self._window_start is None:
            self._window_start = now
        elif now - self._window_start >= WINDOW_S:
            self._adjust()
            self._window_start = now
            self._binding = self._healthy = self._unhealthy = 0
            self._healthy_s = 0.0

    def _adjust(self) -> None:
        finished = self._healthy + self._unhealthy
        if (not self._binding or self._healthy < MIN_SAMPLES
                or self._unhealthy > UNHEALTHY_SHARE * finished):
            return
        mean_s = self._healthy_s / self._healthy
        step = min(MAX_STEP, max(MIN_STEP, self.target_s / mean_s)) if mean_s > 0 else MAX_STEP
        self._value = min(self.ceiling, max(self.floor, self._value * step))
        limit = round(self._value)
        if limit != self.limit:
            self.limit = limit
            self.on_change(limit)
