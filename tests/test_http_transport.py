"""The lean httpx transport against a real uvicorn server: answers, keep-alive reuse, a pooled
connection the server closed, chunked bodies, timeouts and refused connections."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from shared.http_transport import LeanTransport, transport_for

KEEP_ALIVE_S = 1


def echo_app() -> FastAPI:
    app = FastAPI()
    peers: list[int] = []

    @app.post("/echo/{name}")
    async def echo(name: str, request: Request, q: str = "") -> dict:
        peers.append(request.client.port)
        return {"name": name, "q": q, "body": (await request.body()).decode(),
                "type": request.headers.get("content-type"),
                "encoding": request.headers.get("accept-encoding")}

    @app.get("/peers")
    async def get_peers() -> list[int]:
        return peers

    @app.get("/chunked")
    async def chunked() -> StreamingResponse:
        async def parts():
            for i in range(3):
                yield f"part{i};".encode()
        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(2)
        return {}

    @app.get("/fail")
    async def fail() -> dict:
        raise RuntimeError("boom")

    return app


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(echo_app(), host="127.0.0.1", port=port,
                                           log_level="critical",
                                           timeout_keep_alive=KEEP_ALIVE_S))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def run(base: str, steps, timeout: float = 5.0):
    async def go():
        async with httpx.AsyncClient(base_url=base, transport=LeanTransport(),
                                     timeout=timeout) as client:
            return await steps(client)

    return asyncio.run(go())


def test_answers_and_reuses_one_connection(base: str) -> None:
    async def steps(client: httpx.AsyncClient):
        answers = [await client.post("/echo/a%20b", params={"q": "x y"},
                                     json={"n": i}) for i in range(5)]
        peers = (await client.get("/peers")).json()
        return answers, peers

    answers, peers = run(base, steps)
    assert all(r.status_code == 200 for r in answers)
    assert answers[3].json() == {"name": "a b", "q": "x y", "body": '{"n":3}',
                                 "type": "application/json", "encoding": None}
    assert len(set(peers[-5:])) == 1  # keep-alive: one connection for all five


def test_a_connection_the_server_closed_while_idle_is_replaced(base: str) -> None:
    async def steps(client: httpx.AsyncClient):
        first = await client.post("/echo/one")
        await asyncio.sleep(KEEP_ALIVE_S + 0.5)  # uvicorn closes the idle connection
        second = await client.post("/echo/two")
        return first, second

    first, second = run(base, steps)
    assert first.json()["name"] == "one" and second.json()["name"] == "two"


def test_chunked_bodies_and_server_errors(base: str) -> None:
    async def steps(client: httpx.AsyncClient):
        return await client.get("/chunked"), await client.get("/fail")

    chunked, fail = run(base, steps)
    assert chunked.text == "part0;part1;part2;"
    assert fail.status_code == 500


def test_a_slow_answer_is_a_read_timeout(base: str) -> None:
    async def steps(client: httpx.AsyncClient):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow")
        return (await client.post("/echo/after")).json()["name"]  # pool still usable

    assert run(base, steps, timeout=0.3) == "after"


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def steps(client: httpx.AsyncClient):
        with pytest.raises(httpx.ConnectError):
            await client.get("/")

    run(f"http://127.0.0.1:{port}", steps)


def test_only_plain_http_gets_the_lean_transport() -> None:
    assert isinstance(transport_for("http://retrieval:8001"), LeanTransport)
    assert transport_for("https://retrieval.example.com") is None
