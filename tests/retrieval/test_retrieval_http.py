"""The retrieval app end to end: a real uvicorn process on a free port over the real small bundle
and the real Redis feature store; RetrievalClient over real HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.retrieval.client import RetrievalClient
from services.retrieval.errors import AdminRejected, InvalidRequest, ItemNotFound
from shared.bundle import Bundle
from shared.contracts import ItemUpsert, RetrievalQuery, ServiceUnavailable, sources_only
from shared.settings import Settings
from tests.retrieval.test_retrieval_similar import a_popular_item, brute_force
from tests.support import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
LAUNCH = ("import sys, uvicorn; from services.retrieval.app import create_app; "
          "from shared.settings import Settings; "
          "uvicorn.run(create_app(Settings()), host='127.0.0.1', port=int(sys.argv[1]), "
          "log_level='warning')")


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "VIDREC_ARTIFACTS_DIR": str(settings.artifacts_dir),
           "VIDREC_BUNDLE": settings.bundle, "VIDREC_STATE_DIR": str(settings.state_dir),
           "VIDREC_ADMIN_TOKEN": settings.admin_token, "VIDREC_USE_GPU": "false",
           "VIDREC_REDIS_URL": settings.redis_url, "VIDREC_KEY_PREFIX": settings.key_prefix,
           "VIDREC_ORT_INTRA_THREADS": "1"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "retrieval server did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        stop_process(proc)
        log.close()


def a_query(settings: Settings) -> RetrievalQuery:
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    history = next(s for _, s in sorted(bundle.users().items()) if len(s) > 20)[-20:]
    return RetrievalQuery(history=history, tags={"drama": 1.0},
                          caps={"ann": 50, "content": 20, "tags": 10, "popular": 10})


def test_readyz_reports_bundle_index_and_device(server: str, settings: Settings) -> None:
    ready = httpx.get(f"{server}/readyz").json()
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    assert ready["ready"] is True
    assert (ready["bundle"], ready["index"], ready["device"]) == ("ret-a", "flat", "cpu")
    assert ready["items"] == len(bundle.items)
    assert "vidrec_stage_seconds" in httpx.get(f"{server}/metrics").text


def test_admin_routes_reject_missing_and_wrong_tokens(server: str) -> None:
    body = {"title": "t", "embedding": [0.1] * 384}
    calls = [("PUT", "/v1/items/x", body), ("DELETE", "/v1/items/x", None),
             ("POST", "/admin/reload", {})]
    for method, path, json_body in calls:
        missing = httpx.request(method, f"{server}{path}", json=json_body)
        wrong = httpx.request(method, f"{server}{path}", json=json_body,
                              headers={"Authorization": "Bearer not-the-token"})
        assert (missing.status_code, wrong.status_code) == (401, 403), (method, path)
    assert "x" not in {c["item_id"] for c in httpx.post(f"{server}/v1/retrieve", json={
        "queries": [{"caps": {"popular": 2000}}]}).json()["results"][0]["candidates"]}


def test_bad_embedding_dim_is_422_naming_the_field(server: str, settings: Settings) -> None:
    r = httpx.put(f"{server}/v1/items/bad", json={"title": "t", "embedding": [1.0, 2.0]},
                  headers={"Authorization": f"Bearer {settings.admin_token}"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "embedding"]
    assert "384" in r.json()["detail"][0]["msg"]

    async def go():
        client = RetrievalClient(server, 5.0, admin_token=settings.admin_token)
        try:
            with pytest.raises(InvalidRequest) as exc:
                await client.upsert_item("bad", ItemUpsert(title="t", embedding=[1.0]))
            return exc.value
        finally:
            await client.aclose()

    assert asyncio.run(go()).field == "embedding"


def test_an_unknown_source_is_422_naming_it(server: str) -> None:
    """A source name outside shared/sources.py is refused by the wire type, like the Literal
    it replaced: the same error type and message, `loc` naming the cap's key."""
    r = httpx.post(f"{server}/v1/retrieve", json={"queries": [{"caps": {"bogus": 5}}]})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "queries", 0, "caps", "bogus", "[key]"]
    assert error["type"] == "literal_error"
    assert error["msg"] == "Input should be 'ann', 'cooc', 'content', 'tags' or 'popular'"
    ok = httpx.post(f"{server}/v1/retrieve", json={"queries": [{"caps": sources_only(tags=3)}]})
    assert ok.status_code == 200


def test_client_upsert_retrieve_delete_round_trip(server: str, settings: Settings) -> None:
    query = a_query(settings)
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    twin = bundle.content_embeddings()[bundle.row_of[query.history[-1]]].tolist()

    async def go():
        client = RetrievalClient(server, 5.0, admin_token=settings.admin_token)
        intruder = RetrievalClient(server, 5.0, admin_token="wrong")
        try:
            meta = await client.upsert_item("http-new", ItemUpsert(title="Fresh", embedding=twin))
            (found,) = await client.retrieve([query])
            await client.delete_item("http-new")
            (gone,) = await client.retrieve([query])
            with pytest.raises(ItemNotFound):
                await client.delete_item("never-existed")
            with pytest.raises(AdminRejected) as rejected:
                await intruder.delete_item("http-new")
            return meta, found, gone, client.last_bundle, rejected.value.status
        finally:
            await client.aclose()
            await intruder.aclose()

    meta, found, gone, version, status = asyncio.run(go())
    assert meta.item_id == "http-new" and meta.title == "Fresh"
    assert "http-new" in {c.item_id for c in found.candidates if c.source == "content"}
    assert "http-new" not in {c.item_id for c in gone.candidates}
    assert version == "ret-a" and status == 403


def test_reload_under_concurrent_requests_loses_none(server: str, settings: Settings) -> None:
    query = a_query(settings)

    async def go():
        client = RetrievalClient(server, 30.0, admin_token=settings.admin_token)
        outcomes: list[str] = []
        reloads: list[str] = []

        async def one() -> None:
            (result,) = await client.retrieve([query])
            assert result.candidates
            outcomes.append(client.last_bundle or "")

        async def reloader() -> None:
            for version in ("ret-b", "ret-a", "ret-b", "ret-a"):
                reloads.append(await client.reload(version))

        try:
            task = asyncio.create_task(reloader())
            # Waves of 10 concurrent requests for as long as the reloads run, at least 200.
            while not task.done() or len(outcomes) < 200:
                await asyncio.gather(*(one() for _ in range(10)))
            await task
            return outcomes, reloads
        finally:
            await client.aclose()

    outcomes, reloads = asyncio.run(go())
    assert len(outcomes) >= 200  # every request answered (a failure would have raised)
    assert reloads == ["ret-b", "ret-a", "ret-b", "ret-a"]
    assert set(outcomes) == {"ret-a", "ret-b"}  # requests were served across the swaps


def test_client_maps_a_dead_server_to_service_unavailable() -> None:
    async def go():
        client = RetrievalClient(f"http://127.0.0.1:{free_port()}", 1.0, admin_token="t")
        try:
            for call in (client.retrieve([RetrievalQuery()]),
                         client.upsert_item("x", ItemUpsert(title="t")),
                         client.delete_item("x")):
                with pytest.raises(ServiceUnavailable):
                    await call
            return await client.ready()
        finally:
            await client.aclose()

    assert asyncio.run(go()) is False


def test_client_maps_a_silent_server_to_service_unavailable() -> None:
    """A socket that accepts connections but never answers: the timeout becomes
    ServiceUnavailable rather than a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async def go():
            client = RetrievalClient(url, 0.3)
            try:
                started = time.monotonic()
                with pytest.raises(ServiceUnavailable, match="timed out"):
                    await client.retrieve([RetrievalQuery()])
                return time.monotonic() - started
            finally:
                await client.aclose()

        assert asyncio.run(go()) < 5.0


def test_similar_over_http_through_the_client(server: str, settings: Settings) -> None:
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    item = a_popular_item(bundle, 2)

    async def go():
        client = RetrievalClient(server, 5.0)
        try:
            found = await client.similar(item, 8)
            with pytest.raises(ItemNotFound):
                await client.similar("never-existed", 8)
            return found
        finally:
            await client.aclose()

    found = asyncio.run(go())
    truth = brute_force(bundle, item, 8)  # test_retrieval_similar.py
    assert len(found) == 8
    for n in found:
        assert n.item_id in truth[n.source]


def test_similar_route_validates_k(server: str) -> None:
    r = httpx.get(f"{server}/v1/items/x/similar", params={"k": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "k"]
    r = httpx.get(f"{server}/v1/items/never-existed/similar")
    assert r.status_code == 404 and "never-existed" in r.json()["detail"]
