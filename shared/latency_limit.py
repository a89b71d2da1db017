"""An in-flight limit that keeps the time an admitted request takes near a target (Little's law).

Why (bench/results/overload_four_bounds_slow.json against overload_four_limit6.json): past
saturation a service's throughput X is flat, so a bound of L requests in flight makes each of
them take about L / X. The bound that holds a request's time at a target T is T x X, and X is
not a constant: the same VM served four services at ~220 req/s one night and ~140 the next
morning, where 6 and 4 were the bounds that met a 50 ms p99. This limit measures instead of
assuming. Unlike the loop-lag limit (shared/adaptive_limit.py) it sees the time a gateway spends
waiting on the services behind it, which is where a four-service gateway's requests spend it.

Rule, once per WINDOW_S: take the healthy requests of the window that were admitted into the
last free slot ("crowded": every slot taken once they were in), and

    limit <- limit x T / (median time of those requests)

the factor bounded to [MIN_STEP, MAX_STEP] and the limit to [floor, ceiling]. With the service
saturated every request is crowded and their time is about limit / X, so this is T x X. Only the
crowded requests count because they are the latency tail a bound decides: at 1x, bursts fill the
slots now and then, and the mean over all requests (mostly admitted into an idle service) would
say "room for more" while those in the burst were slow (a first version did that: at 1x its
limit rose to 7-8 and the accepted p99 to 56-75 ms). The median, because a host stall slows
every request in flight at once and no bound helps with that.

T is the target, unless a request served alone (in flight by itself; a running median over
windows) already takes longer than the target: then no bound meets it (a dependency slow within
its timer), and a bound that went on falling would refuse requests that are slow for reasons it
cannot change (the issue's rule: a slow dependency slows or degrades an answer, it does not
fail it). T is then QUEUEING x that lone time: the bound only keeps requests from queueing
behind each other. Only past the target, not always: four services' requests at low load took
10-13 ms (median, step-load in bench/results/overload.json), so 1.5 x that is under 25 ms, but
on a host twice as slow it would not be, and the bar would rise where the target should hold.

It must not:
- shrink because a dependency fails: such a request is bounded by a stage timer and answered
  degraded, and shedding would only turn degraded answers into 503s. A window in which more than
  UNHEALTHY_SHARE of the requests were degraded (mark_degraded in shared/admission.py) or failed
  leaves the limit as it is;
- move while a bundle reloads (`held`, set by shared/admission.py's Admission.steady): a reload
  slows every request for a few seconds and the answers stay healthy, so the rule would read it
  as overload (a clean-clone CI run saw 25 of 80 requests refused during one); the windows of
  a reload and its settling time are dropped;
- move on noise: a window needs MIN_SAMPLES crowded requests (when the limit is never reached,
  it does not matter), and a step is at most a quarter.
Hand-written: no maintained Python library bounds concurrency on a latency target (Netflix's
concurrency-limits, whose gradient rule this resembles, is Java).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

WINDOW_S = 0.25
MIN_SAMPLES = 5
UNHEALTHY_SHARE = 0.1
MIN_STEP, MAX_STEP = 0.75, 1.25
QUEUEING = 1.5  # crowded requests may take this many times a lone request's time
MIN_ALONE = 3  # lone requests in a window to update their time
ALONE_WEIGHT = 0.5  # of a window's median in the running time of a lone request


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
        self.held: Callable[[], bool] = lambda: False
        self._clock = clock
        self._window_start: float | None = None
        self._crowded: list[float] = []  # times of this window's healthy crowded requests
        self._alone: list[float] = []  # ... and of those served alone
        self.alone_s: float | None = None  # running time of a request served alone
        self._healthy = 0
        self._unhealthy = 0
        self.healthy_total = self.unhealthy_total = 0  # what it learned from, and did not

    def start(self) -> None:
        """Nothing to start: windows close on the requests' own events."""

    def saw(self, in_flight: int) -> None:
        """An arrival (refused or not): windows close on arrivals too."""
        self._roll()

    def done(self, seconds: float, healthy: bool, crowded: bool, alone: bool) -> None:
        """A request admitted `seconds` ago has finished; unhealthy: degraded or failed;
        crowded: it took the last free slot; alone: it was the only one in flight then."""
        if healthy:
            self._healthy += 1
            self.healthy_total += 1
            if crowded:
                self._crowded.append(seconds)
            if alone:
                self._alone.append(seconds)
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
            self._healthy = self._unhealthy = 0
            self._crowded, self._alone = [], []

    def _adjust(self) -> None:
        finished = self._healthy + self._unhealthy
        if self._unhealthy > UNHEALTHY_SHARE * finished or self.held():
            return
        if len(self._alone) >= MIN_ALONE:
            alone_s = statistics.median(self._alone)
            self.alone_s = (alone_s if self.alone_s is None
                            else ALONE_WEIGHT * alone_s + (1 - ALONE_WEIGHT) * self.alone_s)
        if len(self._crowded) < MIN_SAMPLES:
            return
        typical_s = statistics.median(self._crowded)
        target_s = self.target_s
        if self.alone_s is not None and self.alone_s > self.target_s:
            target_s = QUEUEING * self.alone_s
        step = min(MAX_STEP, max(MIN_STEP, target_s / typical_s)) if typical_s > 0 else MAX_STEP
        self._value = min(self.ceiling, max(self.floor, self._value * step))
        limit = round(self._value)
        if limit != self.limit:
            # a few lines a second at most (one window each): how an operator sees it move
            log.info("admission limit %d -> %d: requests admitted at the limit took %.1f ms "
                     "(median of %d; target %.1f ms)", self.limit, limit, typical_s * 1000,
                     len(self._crowded), target_s * 1000)
            self.limit = limit
            self.on_change(limit)
