"""FeatureStoreClient against the feature store app served by a real uvicorn on a free port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn

from services.feature_store.app import create_app
from services.feature_store.client import FeatureStoreClient
from services.feature_store.errors import UnknownItems
from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta, ServiceUnavailable
from shared.redis_conn import make_redis
from shared.settings import Settings

from .conftest import free_port

pytestmark = pytest.mark.anyio


class Served:
    """create_app(settings) under uvicorn in a thread; lifespan runs for real."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    with Served(settings) as s:
        yield s


@pytest.fixture
async def client(served: Served) -> AsyncIterator[FeatureStoreClient]:
    c = FeatureStoreClient(served.url, timeout_s=5.0)
    yield c
    await c.aclose()


@pytest.fixture
async def seeded(settings: Settings) -> AsyncIterator[FeatureStore]:
    store = FeatureStore(make_redis(settings), settings)
    for i in range(3):
        await store.put_item(ItemMeta(item_id=f"v{i}", title=f"V{i}", tags=[f"t{i}"]))
    yield store
    await store.aclose()


def ev(n: str, item: str, user: str = "u") -> Event:
    return Event(event_id=n, user_id=user, item_id=item, type="like", timestamp=time.time())


async def test_client_matches_the_in_process_store(client: FeatureStoreClient,
                                                   seeded: FeatureStore) -> None:
    out = await client.record_events([ev("1", "v0"), ev("2", "v1"), ev("1", "v0")])
    assert [o.status for o in out] == ["accepted", "accepted", "duplicate"]
    remote, local = await client.hydrate("u", 10), await seeded.hydrate("u", 10)
    assert remote.known and remote.history == local.history == ["v0", "v1"]
    assert sorted(remote.seen) == sorted(local.seen) == ["v0", "v1"]
    # the profile decays by the microsecond, so the two reads differ in the last digits
    assert remote.tag_profile == pytest.approx(local.tag_profile, rel=1e-6)
    assert set(remote.tag_profile) == {"t0", "t1"}
    assert await client.item_meta(["v0", "v2", "zzz"]) == await seeded.item_meta(["v0", "v2"])
    assert await client.history("u", 1) == await seeded.history("u", 1)
    assert (await client.hydrate("stranger", 10)).known is False
    assert await client.ready() is True


async def test_unknown_items_come_back_as_unknown_items(client: FeatureStoreClient,
                                                        seeded: FeatureStore) -> None:
    with pytest.raises(UnknownItems) as info:
        await client.record_events([ev("1", "v0"), ev("2", "v1"), ev("3", "v9"), ev("4", "v2")])
    assert info.value.bad == [(2, "v9")]
    assert info.value.fields == ["events[2].item_id"]
    assert (await seeded.hydrate("u", 10)).known is False  # nothing written


async def test_422_body_names_the_field(served: Served, seeded: FeatureStore) -> None:
    body = {"events": [ev("1", "v0").model_dump(), ev("2", "nope").model_dump()]}
    async with httpx.AsyncClient(base_url=served.url) as http:
        resp = await http.post("/v1/events", json=body)
        assert resp.status_code == 422
        assert resp.json()["detail"] == [{"loc": ["body", "events", 1, "item_id"],
                                          "msg": "unknown item id", "type": "unknown_item",
                                          "input": "nope"}]
        bad = await http.post("/v1/events", json={"events": [{"event_id": "x"}]})
        assert bad.status_code == 422  # plain validation errors stay FastAPI's
        metrics = (await http.get("/metrics")).text
    assert 'vidrec_stage_seconds_count{service="feature_store",stage="item_meta"}' in metrics


async def test_user_ids_with_slashes_reach_their_history(client: FeatureStoreClient,
                                                         seeded: FeatureStore) -> None:
    await client.record_events([ev("1", "v2", user="a/b c?d")])
    assert [e.item_id for e in await client.history("a/b c?d", 5)] == ["v2"]


async def test_client_of_a_dead_port_raises_service_unavailable() -> None:
    client = FeatureStoreClient(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        with pytest.raises(ServiceUnavailable):
            await client.hydrate("u", 5)
        with pytest.raises(ServiceUnavailable):
            await client.record_events([ev("1", "v0")])
        assert await client.ready() is False
    finally:
        await client.aclose()


async def test_client_times_out_as_service_unavailable() -> None:
    port = free_port()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # accepts, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", port)
    client = FeatureStoreClient(f"http://127.0.0.1:{port}", timeout_s=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await client.hydrate("u", 5)
        assert time.monotonic() - start < 3
    finally:
        await client.aclose()
        server.close()


async def test_app_with_redis_down_answers_503_and_client_raises(settings: Settings) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with Served(dead) as served:
        client = FeatureStoreClient(served.url, timeout_s=5.0)
        try:
            with pytest.raises(ServiceUnavailable):
                await client.hydrate("u", 5)
            with pytest.raises(ServiceUnavailable):
                await client.item_meta(["v0"])
            assert await client.ready() is False
            async with httpx.AsyncClient(base_url=served.url) as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.json() == {"ready": False, "redis": "unreachable"}
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await client.aclose()
