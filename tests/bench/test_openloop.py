"""bench/openloop.py's generator against a real socket server that answers each path its own
way: every request sent on time and kept with its outcome, by kind."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import uvloop

from bench.openloop import Request, open_loop, summarise
from bench.serving import run_load


class Server:
    """HTTP/1.1 keep-alive over asyncio streams: /ok 200 (degraded when asked), /busy 503,
    /slow never answers, /cut closes the connection mid-answer."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                path = head.split(b" ")[1].decode()
                if path.startswith("/slow"):
                    await asyncio.sleep(5)
                    return
                if path.startswith("/cut"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"x\"")
                    await writer.drain()
                    return
                status = b"503 Service Unavailable" if path.startswith("/busy") else b"200 OK"
                degraded = ["hydrate"] if "degraded" in path else []
                body = orjson.dumps({"items": [], "degraded": degraded})
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run_against(paths: list[str], rate: float, duration_s: float, timeout_s: float = 2.0,
                loop: str = "uvloop"):
    async def go():
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            run = await open_loop("127.0.0.1", port,
                                  lambda i: Request("GET", paths[i % len(paths)]),
                                  rate, duration_s, timeout_s=timeout_s, keep_bodies=True)
        finally:
            listener.close()
        return run, server

    # the benchmarks run it on uvloop (bench/overload.py, bench/chaos.py); asyncio's own too
    return uvloop.run(go()) if loop == "uvloop" else asyncio.run(go())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_every_request_is_sent_on_time_and_counted_by_outcome(loop: str) -> None:
    paths = ["/ok", "/busy", "/ok?degraded", "/busy"]
    run, server = run_against(paths, rate=200, duration_s=1.0, loop=loop)
    assert len(run.outcomes) == 200 == server.requests
    assert sorted(o.index for o in run.outcomes) == list(range(200))
    for o in run.outcomes:  # each answer belongs to the request that asked for it
        path = paths[o.index % len(paths)]
        assert o.status == (503 if path == "/busy" else 200)
        assert o.degraded == (("hydrate",) if "degraded" in path else ())
        assert abs(o.due - o.index / 200) < 1e-9  # due on the open loop's schedule
        assert 0 < o.latency_s < 1
    summary = summarise(run, 200)
    assert (summary["accepted"], summary["refused"], summary["client_timeouts"]) == (100, 100, 0)
    assert summary["degraded_share"] == 0.5
    assert server.connections < 20  # keep-alive: connections are reused
    assert run.elapsed_s >= 0.99 and run.cpu_s > 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_timeouts_and_cut_connections_are_kept_as_errors(loop: str) -> None:
    run, _ = run_against(["/ok", "/slow", "/cut"], rate=30, duration_s=0.2, timeout_s=0.3,
                         loop=loop)
    by_path = {"/ok": [], "/slow": [], "/cut": []}
    for o in run.outcomes:
        by_path[["/ok", "/slow", "/cut"][o.index % 3]].append(o)
    assert len(run.outcomes) == 6
    assert all(o.status == 200 for o in by_path["/ok"])
    assert all(o.status == 0 and o.error == "TimeoutError" and o.latency_s >= 0.29
               for o in by_path["/slow"])
    assert all(o.status == 0 and o.error == "IncompleteReadError" for o in by_path["/cut"])
    summary = summarise(run, 30)
    assert summary["client_timeouts"] == 2 and summary["other_errors"] == 2


def test_a_server_that_is_not_there_is_an_error_per_request() -> None:
    async def go():
        # a port nothing listens on: bind one and close it
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        return await open_loop("127.0.0.1", port, lambda i: Request("GET", "/ok"), 50, 0.1)

    run = uvloop.run(go())
    assert len(run.outcomes) == 5
    assert {o.error for o in run.outcomes} == {"ConnectionRefusedError"}


def test_a_stop_event_ends_the_run_early() -> None:
    async def go():
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        try:
            return await open_loop("127.0.0.1", port, lambda i: Request("GET", "/ok"), 100,
                                   10.0, stop=stop)
        finally:
            listener.close()

    run = uvloop.run(go())
    assert 20 <= len(run.outcomes) <= 40
    assert all(o.status == 200 for o in run.outcomes)


def test_make_bench_load_summarises_the_open_loop() -> None:
    # bench/serving.py's load is this generator: answers with fewer than k items are counted
    async def go():
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            return await run_load("127.0.0.1", port, ["a", "b"], rate=100, duration=0.5)
        finally:
            listener.close()

    out = uvloop.run(go())
    assert (out["sent"], out["ok"], out["errors"]) == (50, 50, 0)
    assert out["short_lists"] == 50  # the stand-in server answers no items
    assert out["degraded"] == {} and 0 < out["p50_ms"] < 1000
