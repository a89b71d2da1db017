"""Refusal at the door (shared/admission.py Door, shared/server.py): past the limit, a GET is
answered 503 + Retry-After by the HTTP protocol itself, without a task and without reaching the
app; the connection stays usable; health checks and requests with a body are not refused there;
with the door off the middleware refuses exactly as before."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from shared.admission import SHED, add_admission
from shared.server import GuardedHttpToolsProtocol
from shared.settings import Settings
from tests.support import free_port


class Counting:
    """An ASGI wrapper around the app: how many requests reached it, by path."""

    def __init__(self, app: FastAPI) -> None:
        self.app, self.state, self.seen = app, app.state, []
        self.release = lambda: None

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def serve(door: bool, service: str) -> tuple[uvicorn.Server, threading.Thread, int, Counting,
                                              asyncio.Event]:
    app = FastAPI()
    release = asyncio.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    @app.get("/hold")
    async def hold() -> dict:
        loops.append(asyncio.get_running_loop())
        await release.wait()
        return {"held": True}

    @app.get("/hello")
    async def hello() -> dict:
        return {"hello": "world"}

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"size": len(await request.body())}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    add_admission(app, Settings(max_in_flight=1, internal_max_in_flight=1,
                                admission_at_door=door), service)
    counting = Counting(app)
    counting.release = lambda: loops[0].call_soon_threadsafe(release.set)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(counting, host="127.0.0.1", port=port,
                                           loop="asyncio", http=GuardedHttpToolsProtocol,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return server, thread, port, counting, release


@pytest.fixture(params=[True, False], ids=["door", "middleware"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, Counting, asyncio.Event, bool]]:
    service = f"door-test-{request.param}"
    srv, thread, port, counting, release = serve(request.param, service)
    yield port, counting, release, request.param
    srv.should_exit = True
    thread.join(10)


def answer(sock: socket.socket) -> bytes:
    """One HTTP/1.1 answer with a content-length (keep-alive: the socket stays open)."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def get(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return answer(sock)


def test_past_the_limit_a_get_is_refused(server) -> None:  # noqa: ANN001
    port, counting, release, door = server
    service = f"door-test-{door}"
    shed_before = SHED.labels(service, "503")._value.get()
    holder = socket.create_connection(("127.0.0.1", port))
    holder.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")  # takes the only slot
    deadline = time.monotonic() + 5
    while "/hold" not in counting.seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        refused = get(sock, "/hello")
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: 1" in refused.lower()
        assert b"at its limit of 1 requests in flight" in refused
        # At the door the app never saw it; in the middleware it did (the old path).
        assert ("/hello" in counting.seen) is not door
        assert get(sock, "/healthz").startswith(b"HTTP/1.1 200")  # never shed
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        assert answer(sock).startswith(b"HTTP/1.1 503")  # refused by the middleware
        assert "/echo" in counting.seen
        counting.release()  # from the server's own loop: asyncio objects are not thread-safe
        assert answer(holder).startswith(b"HTTP/1.1 200")
        # The same keep-alive connection is served once a slot is free.
        assert get(sock, "/hello").startswith(b"HTTP/1.1 200")
    holder.close()
    assert SHED.labels(service, "503")._value.get() - shed_before == 2
