"""Admission control on a real FastAPI app over real HTTP (uvicorn in a thread, as the services
run it): the in-flight bound, immediate 503 + Retry-After past it, health never shed, the
optional queue, the metrics, body limits before parsing."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from shared.admission import add_admission
from shared.observability import add_ops_routes
from shared.settings import MAX_IN_FLIGHT_IN_PROCESS, MAX_IN_FLIGHT_OVER_HTTP, Settings
from shared.steps import PAUSE_WHEN
from tests.gateway.conftest import serving

LIMIT = 3


class Gate:
    """Requests to /slow wait here until the test opens it, so in-flight work is exact."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = 0
        self.bodies: list[bytes] = []

    async def wait(self) -> None:
        self.entered += 1
        while not self.opened.is_set():
            await asyncio.sleep(0.005)


def make_app(gate: Gate, **overrides) -> FastAPI:
    settings = Settings(**{"max_in_flight": LIMIT, "max_body_bytes": 1000, "body_timeout_s": 1.0,
                           "admission_adaptive": False, **overrides})
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict:
        await gate.wait()
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        gate.bodies.append(body)
        await gate.wait()
        return {"size": len(body)}

    @app.get("/pauses")
    async def pauses() -> dict:
        # what in-process steps (shared/steps.py) would be told while this request runs
        pause_when = PAUSE_WHEN.get()
        return {"told": pause_when is not None, "pause": bool(pause_when and pause_when())}

    @app.post("/admin/reload")
    async def reload() -> dict:
        return {"reloaded": True}

    async def ready() -> dict:
        return {"ready": True}

    add_ops_routes(app, ready)
    add_admission(app, settings, "gateway")
    return app


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def base(gate: Gate) -> Iterator[str]:
    with serving(make_app(gate)) as url:
        yield url


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for match in re.finditer(rf"^{name}\{{(.*)\}} ([0-9.e+-]+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


async def _fill(base: str, gate: Gate, client: httpx.AsyncClient,
                limit: int = LIMIT) -> list[asyncio.Task]:
    held = [asyncio.create_task(client.get(f"{base}/slow")) for _ in range(limit)]
    for _ in range(400):
        if gate.entered >= limit:
            break
        await asyncio.sleep(0.01)
    assert gate.entered == limit
    return held


def test_past_the_limit_a_request_is_refused_at_once_with_retry_after(base: str,
                                                                      gate: Gate) -> None:
    async def scenario() -> None:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            before = (await client.get(f"{base}/metrics")).text
            held = await _fill(base, gate, client)
            refused = await client.get(f"{base}/slow")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert "limit of 3" in refused.json()["detail"]
            # never shed: a load balancer must see the process alive and ready
            assert (await client.get(f"{base}/healthz")).status_code == 200
            assert (await client.get(f"{base}/readyz")).status_code == 200
            # nor an operator's reload (rare, may take minutes: it must not wait for capacity)
            assert (await client.post(f"{base}/admin/reload")).status_code == 200
            text = (await client.get(f"{base}/metrics")).text
            assert metric(text, "vidrec_admission_limit", service="gateway") == LIMIT
            assert metric(text, "vidrec_admission_in_flight", service="gateway") == LIMIT
            shed = "vidrec_admission_shed_total"
            assert (metric(text, shed, service="gateway", answer="503")
                    - metric(before, shed, service="gateway", answer="503")) == 1
            gate.opened.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200] * LIMIT
            # capacity is back once the work is done
            assert (await client.get(f"{base}/slow")).status_code == 200
            text = (await client.get(f"{base}/metrics")).text
            assert metric(text, "vidrec_admission_in_flight", service="gateway") == 0

    asyncio.run(scenario())


def test_an_admitted_request_pauses_its_steps_only_while_every_slot_is_taken(
        base: str, gate: Gate) -> None:
    # In-process retrieval and scoring pause for the event loop only when an arrival would be
    # refused (shared/steps.py); below the limit they run through.
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=20)) as c:
            assert (await c.get(f"{base}/pauses")).json() == {"told": True, "pause": False}
            held = await _fill(base, gate, c, LIMIT - 1)  # with this one: every slot taken
            assert (await c.get(f"{base}/pauses")).json() == {"told": True, "pause": True}
            gate.opened.set()
            await asyncio.gather(*held)
            assert (await c.get(f"{base}/pauses")).json() == {"told": True, "pause": False}

    asyncio.run(scenario())


@pytest.mark.parametrize(("urls", "limit"), [
    ({}, MAX_IN_FLIGHT_IN_PROCESS),
    ({"retrieval_url": "http://127.0.0.1:9", "ranking_url": "http://127.0.0.1:9"},
     MAX_IN_FLIGHT_OVER_HTTP),
])
def test_unset_the_gateways_limit_follows_how_it_reaches_the_services(
        gate: Gate, urls: dict[str, str], limit: int) -> None:
    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=20)) as c:
            held = await _fill(base, gate, c, limit)  # `limit` requests are served at once
            refused = await c.get(f"{base}/slow")
            assert refused.status_code == 503 and f"limit of {limit}" in refused.json()["detail"]
            text = (await c.get(f"{base}/metrics")).text
            assert metric(text, "vidrec_admission_limit", service="gateway") == limit
            gate.opened.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200] * limit

    local = {"feature_store_url": None, "retrieval_url": None, "ranking_url": None}
    with serving(make_app(gate, max_in_flight=None, **{**local, **urls})) as url:
        asyncio.run(scenario(url))


def test_a_shed_post_never_reaches_the_handler(base: str, gate: Gate) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            held = await _fill(base, gate, client)
            r = await client.post(f"{base}/echo", content=b"x" * 10)
            assert r.status_code == 503
            assert gate.bodies == []  # nothing of a shed request is applied
            gate.opened.set()
            await asyncio.gather(*held)

    asyncio.run(scenario())


def test_a_short_queue_waits_for_a_slot_then_refuses(gate: Gate) -> None:
    app = make_app(gate, admission_queue=1, admission_queue_wait_s=2.0)

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            held = await _fill(base, gate, client)
            queued = asyncio.create_task(client.get(f"{base}/slow"))
            await asyncio.sleep(0.2)
            text = (await client.get(f"{base}/metrics")).text
            assert metric(text, "vidrec_admission_waiting", service="gateway") == 1
            # the queue is full: the next one is refused without waiting
            assert (await client.get(f"{base}/slow")).status_code == 503
            gate.opened.set()
            assert (await queued).status_code == 200
            await asyncio.gather(*held)

    with serving(app) as base:
        asyncio.run(scenario(base))


def test_a_body_over_the_limit_is_413_before_it_is_read(base: str, gate: Gate) -> None:
    gate.opened.set()
    r = httpx.post(f"{base}/echo", content=b"x" * 1001)
    assert r.status_code == 413 and "limit of 1000 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        for _ in range(20):
            yield b"y" * 100

    r = httpx.post(f"{base}/echo", content=chunks())
    assert r.status_code == 413
    assert gate.bodies == []
    r = httpx.post(f"{base}/echo", content=b"z" * 1000)
    assert r.status_code == 200 and r.json() == {"size": 1000}
