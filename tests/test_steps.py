"""shared/steps.py: one implementation of synchronous work, run at once or with the event loop
given a turn between its steps."""

from __future__ import annotations

import asyncio

import pytest

from shared.steps import PAUSE_WHEN, Steps, finish, run_in_steps
from tests.support import loop_turns_during


def three_steps(log: list[str]) -> Steps[int]:
    log.append("a")
    yield
    log.append("b")
    yield
    log.append("c")
    return 42


def failing_at_second_step() -> Steps[int]:
    yield
    raise ValueError("step two broke")


def test_finish_runs_every_step_and_returns_the_result() -> None:
    log: list[str] = []
    assert finish(three_steps(log)) == 42
    assert log == ["a", "b", "c"]


def test_run_in_steps_lets_other_tasks_run_between_steps() -> None:
    log: list[str] = []

    async def other() -> None:
        for _ in range(3):
            log.append("other")
            await asyncio.sleep(0)

    async def go() -> int:
        side = asyncio.create_task(other())
        result = await run_in_steps(three_steps(log))
        await side
        return result

    assert asyncio.run(go()) == 42
    # the other task ran between "a" and "b" and between "b" and "c", not only before or after
    assert log.index("b") > log.index("other") > log.index("a")
    assert log[log.index("b"):log.index("c")].count("other") == 1


def test_the_loop_gets_one_turn_per_pause_and_a_step_that_fails_raises() -> None:
    async def go() -> int:
        _, turns = await loop_turns_during(run_in_steps(three_steps([])))
        return turns

    assert asyncio.run(go()) == 2
    with pytest.raises(ValueError, match="step two broke"):
        finish(failing_at_second_step())
    with pytest.raises(ValueError, match="step two broke"):
        asyncio.run(run_in_steps(failing_at_second_step()))


def test_a_request_below_its_limit_runs_its_steps_through() -> None:
    # admission control tells each request whether its service is at its limit (PAUSE_WHEN)
    async def turns_when(at_limit: bool) -> int:
        PAUSE_WHEN.set(lambda: at_limit)  # this task's context only
        _, turns = await loop_turns_during(run_in_steps(three_steps([])))
        return turns

    assert asyncio.run(turns_when(False)) == 0
    assert asyncio.run(turns_when(True)) == 2
