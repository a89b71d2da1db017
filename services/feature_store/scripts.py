"""Running a Lua script once per call in one pipeline, for the per-event and per-batch event
paths (events.py, batch.py)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import NoScriptError


async def eval_pipelined(redis: Any, script: str, sha: str,
                         calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """EVALSHA every (keys, args) call in one pipeline; calls Redis answered NOSCRIPT for are
    re-run after loading the script (NOSCRIPT means the script did not run, so re-running is
    safe). The first error of any other kind is raised."""
    results: list[Any] = [NoScriptError()] * len(calls)
    for attempt in range(2):
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if not missing:
            break
        if attempt:
            await redis.script_load(script)
        pipe = redis.pipeline(transaction=False)
        for i in missing:
            keys, args = calls[i]
            # (redis-py's cluster pipeline blocks .evalsha(); routing by the keys works)
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        for i, r in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results
