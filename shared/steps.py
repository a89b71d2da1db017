"""Synchronous CPU work in steps, so one implementation serves both a caller that wants the
answer now and an event loop that must not be held for the whole of it.

    def work(...) -> Steps[int]:      # a generator: `yield` marks where it may pause
        a = first_half(); yield
        return second_half(a)

    finish(work(...))                 # synchronous: runs every step at once
    await run_in_steps(work(...))     # lets the loop run between steps (when it matters)

Why: in one process the gateway runs retrieval and scoring on its event loop (~1 ms each of
CPU). The loop reads its sockets only between callbacks, so with every admission slot taken a
request arriving mid-burst waits for all of the running stages before it is even parsed, and
a refusal that should take a millisecond takes several (docs/capacity.md). A pause is one turn
of the loop (`asyncio.sleep(0)`), a few microseconds; uvloop reads the sockets in it.

Only then, though: a request's admission control says, through PAUSE_WHEN, whether its
service is at its limit. Below it, an arrival is accepted anyway, and pausing would only
interleave the requests in flight, so that each finishes later and more of them are refused
(measured side by side: bench/results/overload_steps.json). Work run outside a request pauses
at every step.

Not a thread: the work is our own Python and numpy holding the GIL in between, and handing it
to a thread cost more than it saved (the ranking service's executor, reverted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from contextvars import ContextVar
from typing import TypeVar, cast

T = TypeVar("T")
Steps = Generator[None, None, T]

# Set by admission control for each request it admits (shared/admission.py): whether the
# request's service has every slot taken now. None: pause at every step.
PAUSE_WHEN: ContextVar[Callable[[], bool] | None] = ContextVar("vidrec_pause_when",
                                                               default=None)


def finish(steps: Steps[T]) -> T:
    """Run every step now and return the result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)  # a generator's return value is untyped


async def run_in_steps(steps: Steps[T]) -> T:
    """Run the steps, letting the event loop run between them when PAUSE_WHEN says so."""
    pause_when = PAUSE_WHEN.get()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)  # a generator's return value is untyped
        if pause_when is None or pause_when():
            await asyncio.sleep(0)
