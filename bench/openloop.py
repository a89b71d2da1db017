"""An open-loop HTTP load generator that keeps every answer: for the overload benchmark
(bench/overload.py) and the chaos test and run (tests/overload/test_chaos.py, bench/chaos.py).

Open loop: request i is due at start + i/rate whatever happened to earlier ones, and its latency
is measured from when it was due, so a stalled server cannot hide its queue. Each outcome keeps
its status, latency and `degraded` list, so that refused (503) and accepted answers, client
timeouts and degraded answers are counted apart. Keep-alive HTTP/1.1 over asyncio streams (a
minimal client, as in bench/serving.py: httpx would spend more of the 2 cores than the server).
Its own CPU use is reported beside the numbers (`generator_cpu`), since it shares the machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

IDLE_REUSE_S = 3.0  # below uvicorn's keep-alive timeout (5 s)
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""


@dataclass
class Outcome:
    due: float  # seconds since the run's start
    latency_s: float
    status: int  # 0 when there was no HTTP answer
    error: str = ""  # exception kind when status == 0
    degraded: tuple[str, ...] = ()
    payload: dict | None = None  # the parsed answer, when keep_bodies
    index: int = -1  # i of make(i)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.perf_counter()

    def fresh(self) -> bool:
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and time.perf_counter() - self.last_used < IDLE_REUSE_S)

    async def send(self, host: str, req: Request) -> tuple[int, bytes]:
        head = f"{req.method} {req.path} HTTP/1.1\r\nHost: {host}\r\n"
        if req.body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(req.body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + req.body)
        answer = await self.reader.readuntil(b"\r\n\r\n")
        status = int(answer[9:12])
        match = _LENGTH.search(answer)
        if match is None:
            raise RuntimeError("response without content-length")
        body = await self.reader.readexactly(int(match.group(1)))
        if b"\r\nconnection: close" in answer.lower():
            self.writer.close()
        return status, body


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    late_starts: int = 0
    cpu_s: float = 0.0
    start: float = 0.0  # perf_counter() at which request 0 was due


async def open_loop(host: str, port: int, make: Callable[[int], Request], rate: float,
                    duration_s: float, timeout_s: float = 2.0, keep_bodies: bool = False,
                    stop: asyncio.Event | None = None, run: Run | None = None) -> Run:
    """Send make(i) at start + i/rate for duration_s (or until `stop` is set). Pass `run` to
    watch it fill (its `start` is set before the first request)."""
    idle: list[Conn] = []
    run = run if run is not None else Run()
    clock = time.perf_counter
    cpu0 = _cpu()

    async def one(i: int, req: Request, due: float, start: float) -> None:
        if clock() - due > 0.001:
            run.late_starts += 1
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            if not conn.fresh():
                conn.writer.close()
                conn = None
        try:
            async with asyncio.timeout(timeout_s):
                if conn is None:
                    conn = Conn(*await asyncio.open_connection(host, port))
                status, body = await conn.send(host, req)
        except Exception as exc:  # every failure is kept, by kind
            if conn is not None:
                conn.writer.close()
            run.outcomes.append(Outcome(due - start, clock() - due, 0, type(exc).__name__,
                                        index=i))
            return
        done = clock()
        conn.last_used = done
        if not conn.writer.is_closing():
            idle.append(conn)
        degraded: tuple[str, ...] = ()
        payload = None
        if status == 200 and body[:1] == b"{":
            payload = orjson.loads(body)
            degraded = tuple(payload.get("degraded", ()) if isinstance(payload, dict) else ())
        run.outcomes.append(Outcome(due - start, done - due, status, "", degraded,
                                    payload if keep_bodies else None, i))

    n = int(rate * duration_s)
    tasks = []
    start = run.start = clock() + 0.05
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, make(i), due, start)))
    await asyncio.gather(*tasks)
    run.elapsed_s = clock() - start
    run.cpu_s = _cpu() - cpu0
    for conn in idle:
        conn.writer.close()
    return run


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(values) * 1000, q)), 2) if values else None


def summarise(run: Run, rate: float, shed_stage: str = "admission") -> dict:
    """Accepted = 200 answered in full by the pipeline; refused = 503 (or 200 flagged with
    `shed_stage`: the cheap answer admission control may give instead of 503)."""
    accepted: list[Outcome] = []
    refused: list[Outcome] = []
    timeouts: list[Outcome] = []
    other: list[Outcome] = []
    for o in run.outcomes:
        if o.status == 200:
            (refused if shed_stage in o.degraded else accepted).append(o)
        elif o.status == 503:
            refused.append(o)
        elif o.error == "TimeoutError":
            timeouts.append(o)
        else:
            other.append(o)
    degraded = [o for o in accepted if o.degraded]
    by_stage: dict[str, int] = {}
    for o in degraded:
        for stage in o.degraded:
            by_stage[stage] = by_stage.get(stage, 0) + 1
    kinds: dict[str, int] = {}
    for o in other:
        key = o.error or f"http_{o.status}"
        kinds[key] = kinds.get(key, 0) + 1
    lat = [o.latency_s for o in accepted]
    ref = [o.latency_s for o in refused]
    return {
        "offered_rps": rate, "sent": len(run.outcomes),
        "accepted": len(accepted), "refused": len(refused), "client_timeouts": len(timeouts),
        "other_errors": len(other), "other_error_kinds": kinds,
        "goodput_rps": round(len(accepted) / run.elapsed_s, 1) if run.elapsed_s else 0.0,
        "accepted_p50_ms": _pct(lat, 50), "accepted_p99_ms": _pct(lat, 99),
        "accepted_max_ms": _pct(lat, 100),
        "refused_p50_ms": _pct(ref, 50), "refused_p99_ms": _pct(ref, 99),
        "refused_max_ms": _pct(ref, 100),
        "all_p99_ms": _pct([o.latency_s for o in run.outcomes], 99),
        "degraded_share": round(len(degraded) / len(accepted), 4) if accepted else None,
        "degraded_by_stage": by_stage,
        "generator_late_starts": run.late_starts,
        "generator_cpu": round(run.cpu_s / run.elapsed_s, 3) if run.elapsed_s else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
