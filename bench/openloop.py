"""An open-loop HTTP load generator that keeps every answer: for the overload benchmark
(bench/overload.py) and the chaos test and run (tests/overload/test_chaos.py, bench/chaos.py).

Open loop: request i is due at start + i/rate whatever happened to earlier ones, and its latency
is measured from when it was due, so a stalled server cannot hide its queue (or from when it was
sent, if a timer fired early: see `dispatch`). Each outcome keeps its status, latency and
`degraded` list, so that refused (503) and accepted answers, client timeouts and degraded
answers are counted apart. Keep-alive HTTP/1.1 on asyncio protocol callbacks (a minimal client:
httpx would spend more of the 2 cores than the server). Its own CPU use is reported beside the
numbers (`generator_cpu`), since it shares the machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

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


class _Exchange(asyncio.Protocol):
    """One keep-alive connection of the open loop, one request at a time, driven by callbacks:
    no task, stream or timeout context per request. At 3x capacity the generator sends ~700
    requests a second on the servers' 2 cores, and the stream-and-task client it replaces spent
    ~0.15 ms of CPU on each (`generator_cpu`); CPU the generator spends is taken from the
    servers it measures."""

    def __init__(self, on_answer: Callable[[_Exchange, int, bytes], None],
                 on_lost: Callable[[_Exchange, str], None]) -> None:
        self.on_answer, self.on_lost = on_answer, on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.body_at = -1  # where the pending answer's body starts, once its head is in
        self.length = 0
        self.status = 0
        self.close_after = False
        self.busy = False
        self.last_used = time.perf_counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass, only alike)
        self.transport = cast(asyncio.Transport, transport)

    def usable(self) -> bool:
        return (self.transport is not None and not self.transport.is_closing()
                and time.perf_counter() - self.last_used < IDLE_REUSE_S)

    def send(self, host: str, req: Request) -> None:
        assert self.transport is not None
        head = f"{req.method} {req.path} HTTP/1.1\r\nHost: {host}\r\n"
        if req.body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(req.body)}\r\n"
        self.busy = True
        self.transport.write(head.encode() + b"\r\n" + req.body)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.body_at < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end + 2])
            match = _LENGTH.search(head)
            if match is None:
                self.close("response without content-length")
                return
            self.status, self.length, self.body_at = int(head[9:12]), int(match.group(1)), end + 4
            self.close_after = b"\r\nconnection: close" in head.lower()
        if len(self.buffer) < self.body_at + self.length:
            return
        body = bytes(self.buffer[self.body_at:self.body_at + self.length])
        del self.buffer[:self.body_at + self.length]
        self.body_at = -1
        self.busy = False
        self.last_used = time.perf_counter()
        if self.close_after and self.transport is not None:
            self.transport.close()
        self.on_answer(self, self.status, body)

    def close(self, why: str = "") -> None:
        if self.transport is not None:
            self.transport.close()
        if self.busy:
            self.busy = False
            self.on_lost(self, why or "ConnectionClosed")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:  # the server closed (or reset) the connection mid-answer
            self.busy = False
            self.on_lost(self, type(exc).__name__ if exc else "IncompleteReadError")


async def open_loop(host: str, port: int, make: Callable[[int], Request], rate: float,
                    duration_s: float, timeout_s: float = 2.0, keep_bodies: bool = False,
                    stop: asyncio.Event | None = None, run: Run | None = None) -> Run:
    """Send make(i) at start + i/rate for duration_s (or until `stop` is set). Pass `run` to
    watch it fill (its `start` is set before the first request)."""
    loop = asyncio.get_running_loop()
    idle: list[_Exchange] = []
    run = run if run is not None else Run()
    clock = time.perf_counter
    cpu0 = _cpu()
    n = int(rate * duration_s)
    open_requests = 0
    all_sent = False
    finished: asyncio.Future[None] = loop.create_future()
    # per connection in use: (request index, due time, when its latency counts from, the
    # handle of its timeout)
    pending: dict[_Exchange, tuple[int, float, float, asyncio.TimerHandle]] = {}
    start = run.start = clock() + 0.05

    def settle() -> None:
        nonlocal open_requests
        open_requests -= 1
        if all_sent and open_requests == 0 and not finished.done():
            finished.set_result(None)

    def sent_all() -> None:
        nonlocal all_sent
        all_sent = True
        if open_requests == 0 and not finished.done():
            finished.set_result(None)

    def record(i: int, due: float, status: int, error: str = "", body: bytes = b"",
               since: float | None = None) -> None:
        degraded: tuple[str, ...] = ()
        payload = None
        if status == 200 and body[:1] == b"{":
            payload = orjson.loads(body)
            degraded = tuple(payload.get("degraded", ()) if isinstance(payload, dict) else ())
        run.outcomes.append(Outcome(due - start, clock() - (due if since is None else since),
                                    status, error, degraded,
                                    payload if keep_bodies else None, i))
        settle()

    def answered(conn: _Exchange, status: int, body: bytes) -> None:
        entry = pending.pop(conn, None)
        if entry is None:  # answered after its timeout was recorded
            return
        i, due, since, timer = entry
        timer.cancel()
        if conn.usable():
            idle.append(conn)
        record(i, due, status, body=body, since=since)

    def lost(conn: _Exchange, error: str) -> None:
        entry = pending.pop(conn, None)
        if entry is not None:
            entry[3].cancel()
            record(entry[0], entry[1], 0, error, since=entry[2])

    def timed_out(conn: _Exchange) -> None:
        entry = pending.pop(conn, None)
        if entry is not None:
            conn.busy = False  # a late answer on it must not be counted
            if conn.transport is not None:
                conn.transport.close()
            record(entry[0], entry[1], 0, "TimeoutError", since=entry[2])

    def dispatch(conn: _Exchange, i: int, req: Request, due: float) -> None:
        left = timeout_s - (clock() - due)
        if left <= 0:
            conn.close()
            record(i, due, 0, "TimeoutError")
            return
        # Latency counts from when the request was due, as an open loop must (a late send is
        # the server's queue too); from when it was sent if that was earlier: uvloop's timers
        # work in whole milliseconds and may fire up to one early.
        since = min(due, clock())
        pending[conn] = (i, due, since, loop.call_later(left, timed_out, conn))
        conn.send(host, req)

    async def connect_then_send(i: int, req: Request, due: float) -> None:
        try:
            async with asyncio.timeout(timeout_s - (clock() - due)):
                _, conn = await loop.create_connection(lambda: _Exchange(answered, lost),
                                                       host, port)
        except Exception as exc:  # every failure is kept, by kind
            record(i, due, 0, type(exc).__name__)
            return
        dispatch(conn, i, req, due)

    def fire(i: int) -> None:
        nonlocal open_requests
        if stop is not None and stop.is_set():
            sent_all()
            return
        due = start + i / rate
        if clock() - due > 0.001:
            run.late_starts += 1
        open_requests += 1
        req = make(i)
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            if not conn.usable():
                conn.close()
                conn = None
        if conn is None:
            task = loop.create_task(connect_then_send(i, req, due))
            connecting.add(task)  # held so that it is not collected mid-way
            task.add_done_callback(connecting.discard)
        else:
            dispatch(conn, i, req, due)
        if i + 1 < n:
            loop.call_later(max(0.0, start + (i + 1) / rate - clock()), fire, i + 1)
        else:
            sent_all()

    connecting: set[asyncio.Task[None]] = set()

    if n > 0 and not (stop is not None and stop.is_set()):
        loop.call_later(max(0.0, start - clock()), fire, 0)
        await finished
    run.elapsed_s = clock() - start
    run.cpu_s = _cpu() - cpu0
    for conn in idle:
        conn.close()
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
