"""The adaptive in-flight limit: it comes down while the event loop lags (work in front of the
CPU) and goes back up once the lag is gone and the limit is being reached; a slow dependency
(waiting, no CPU) does not move it. The real-loop tests use lags far apart (blocks of 100 ms
against a 30 ms target) so that a busy test machine's own scheduling delay cannot decide them;
the control rule itself is checked with exact numbers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shared.adaptive_limit import LoopLagLimit


async def _for(seconds: float, each: Callable[[], None]) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        each()
        await asyncio.sleep(0.001)


def test_the_control_rule() -> None:
    limit = LoopLagLimit(ceiling=8, floor=2, target_lag_s=0.004)
    limit._adjust(0.010)  # lagging: cut by a quarter, at least one
    assert limit.limit == 6
    limit.peak = 6
    limit._adjust(0.003)  # between half the target and the target: hold
    assert limit.limit == 6
    limit._adjust(0.001)  # no lag and the limit was reached: one more
    assert limit.limit == 7
    limit.peak = 3
    limit._adjust(0.001)  # no lag but the limit was not reached: hold
    assert limit.limit == 7
    for _ in range(10):
        limit._adjust(1.0)
    assert limit.limit == 2  # the floor
    for _ in range(10):
        limit.peak = limit.limit
        limit._adjust(0.0)
    assert limit.limit == 8  # the ceiling


def test_on_a_real_loop_it_comes_down_while_it_lags_and_goes_back_up() -> None:
    limit = LoopLagLimit(ceiling=16, floor=2, target_lag_s=0.03)
    seen: list[int] = []
    limit.on_change = seen.append

    async def scenario() -> tuple[int, int]:
        limit.start()
        await _for(1.0, lambda: time.sleep(0.1))  # 100 ms blocks in front of every timer
        low = limit.limit
        await _for(1.5, lambda: limit.saw(limit.limit))  # idle, requests at the limit
        return low, limit.limit

    low, high = asyncio.run(scenario())
    assert low < 16 and min(seen) == 2, seen
    assert high > min(seen) and seen[-1] == high, seen


def test_waiting_on_a_slow_dependency_does_not_lower_it() -> None:
    limit = LoopLagLimit(ceiling=8, floor=2, target_lag_s=0.03)

    async def scenario() -> int:
        limit.start()
        # eight requests waiting on a slow answer: no CPU used, no lag
        await asyncio.gather(*(asyncio.sleep(0.5) for _ in range(8)))
        return limit.limit

    assert asyncio.run(scenario()) == 8
