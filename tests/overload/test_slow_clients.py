"""Slow and oversized clients against the server the services run on (uvicorn with
shared/server.py's protocol and shared/admission.py's body reader), over raw sockets so that
each byte's timing is the test's: headers trickled -> 408 and closed, a connection that sends
nothing -> closed, headers too large -> 431, a body trickled -> 408."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from shared.admission import add_admission
from shared.server import GuardedHttpToolsProtocol
from shared.settings import Settings
from tests.support import free_port

HEADER_TIMEOUT_S = 0.6
BODY_TIMEOUT_S = 0.6


class QuickProtocol(GuardedHttpToolsProtocol):
    header_timeout_s = HEADER_TIMEOUT_S


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict:
        return {"hello": "world"}

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"size": len(await request.body())}

    add_admission(app, Settings(body_timeout_s=BODY_TIMEOUT_S), "gateway")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio",
                                           http=QuickProtocol, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def read_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or timeout_s passes)."""
    sock.settimeout(timeout_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        out += b"<still open>"
    return out


def trickle(sock: socket.socket, data: bytes, every_s: float) -> float:
    """Send data a byte at a time; the seconds until the server closed, or -1 if it never did."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # the server closed on us: cut off
            return time.monotonic() - start
        time.sleep(every_s)
    return -1.0


def test_a_normal_request_is_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b'"world"' in answer


def test_headers_trickled_are_cut_off_with_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
        trickle(sock, request, every_s=0.05)  # 5+ s to send it all
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.monotonic()
        answer = read_all(sock, timeout_s=HEADER_TIMEOUT_S * 8)
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert waited < HEADER_TIMEOUT_S * 8


def test_headers_over_the_size_limit_get_431(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n"
                     + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 4000) for i in range(20)))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_a_body_trickled_is_cut_off_with_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n")
        trickle(sock, b"x" * 200, every_s=0.05)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"not received within" in answer


def test_keep_alive_between_requests_still_works(port: int) -> None:
    """The header timer restarts per request: a connection reused after a pause is fine."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(2):
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.settimeout(5)
            answer = b""
            while b'"world"}' not in answer:
                chunk = sock.recv(65536)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(HEADER_TIMEOUT_S / 2)
