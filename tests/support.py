"""Small helpers shared by the test packages."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout_s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def arm_frozen_then_freed(service: Any, version: str, arm: Callable[[], object]
                                ) -> tuple[int, weakref.ref[Any]]:
    """Serve bundle `version` for an experiment arm beside `service`'s main one, then drop it:
    (objects frozen once it was loaded, a weak reference to what `arm()` held). The caller
    unfreezes afterwards (gc.unfreeze), to leave its test process as it was."""
    gc.unfreeze()
    await service.serve_bundles([version])
    frozen = gc.get_freeze_count()
    held = weakref.ref(arm())
    await service.serve_bundles([])
    return frozen, held


def thread_niceness(pid: int) -> dict[int, int]:
    """Thread id -> CPU niceness of each thread of a process (Linux keeps one per thread), from
    /proc/PID/task/TID/stat: the 19th field, counted after the command name's parenthesis."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = int(fields[16])
    return out


async def loop_turns_during(work: Awaitable[T]) -> tuple[T, int]:
    """(work's result, how many times another task got the event loop while it ran): 0 for work
    that holds the loop from start to end."""
    turns = 0
    running = True

    async def count() -> None:
        nonlocal turns
        while running:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count())
    await asyncio.sleep(0)  # the counter is waiting for its first turn
    before = turns
    try:
        result = await work
    finally:
        running = False
    during = turns - before
    await counter
    return result, during
