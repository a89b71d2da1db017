"""Redis that is down, dies, restarts, wants a password; events surviving a crash via AOF."""

from __future__ import annotations

import time

import pytest
import redis
from redis._parsers.hiredis import _AsyncHiredisParser

from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta, ServiceUnavailable
from shared.redis_conn import make_redis, make_redis_sync, redis_target
from shared.settings import Settings

from .conftest import ServerPool, free_port, streamed

pytestmark = pytest.mark.anyio


def ev(n: str, item: str = "v0", user: str = "u") -> Event:
    return Event(event_id=n, user_id=user, item_id=item, type="complete",
                 timestamp=time.time(), watch_fraction=1.0)


async def test_unreachable_redis_raises_service_unavailable(settings: Settings) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    store = FeatureStore.from_settings(dead)
    try:
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await store.hydrate("u", 10)
        assert time.monotonic() - start < 2  # fails fast; the gateway degrades
        with pytest.raises(ServiceUnavailable):
            await store.item_meta(["v0"])
        with pytest.raises(ServiceUnavailable):
            await store.record_events([ev("1")])
        with pytest.raises(ServiceUnavailable):
            await store.history("u", 5)
        with pytest.raises(ServiceUnavailable):
            await store.put_item(ItemMeta(item_id="x", title="X"))
        assert await store.ready() is False
    finally:
        await store.aclose()


async def test_unreachable_cluster_raises_service_unavailable(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0?cluster=true"})
    store = FeatureStore.from_settings(dead)
    try:
        with pytest.raises(ServiceUnavailable):
            await store.hydrate("u", 10)
        with pytest.raises(ServiceUnavailable):
            await store.record_events([ev("1")])
        assert await store.ready() is False
    finally:
        await store.aclose()


async def test_redis_dying_and_coming_back(settings: Settings, redis_servers: ServerPool) -> None:
    server = redis_servers()
    own = settings.model_copy(update={"redis_url": server.url})
    store = FeatureStore.from_settings(own)
    try:
        await store.put_item(ItemMeta(item_id="v0", title="V0", tags=["a"]))
        await store.record_events([ev("1")])
        assert (await store.hydrate("u", 5)).history == ["v0"]

        server.stop(kill=True)
        with pytest.raises(ServiceUnavailable):
            await store.hydrate("u", 5)
        assert await store.ready() is False

        server.start()  # empty again (no persistence), same port: the pool reconnects
        assert await store.ready() is True
        assert (await store.hydrate("u", 5)).known is False
    finally:
        await store.aclose()


async def test_events_survive_a_crash_through_the_aof(settings: Settings,
                                                      redis_servers: ServerPool) -> None:
    server = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    own = settings.model_copy(update={"redis_url": server.url})
    store = FeatureStore.from_settings(own)
    try:
        await store.put_item(ItemMeta(item_id="v0", title="V0", tags=["a"]))
        await store.put_item(ItemMeta(item_id="v1", title="V1", tags=["b"]))
        await store.record_events([ev("1", "v0"), ev("2", "v1"), ev("3", "v0", user="w")])
        before = await store.hydrate("u", 10)
    finally:
        await store.aclose()

    server.stop(kill=True)  # SIGKILL: no shutdown save; --save "" so there is no RDB either
    assert not (server.dir / "dump.rdb").exists()
    server.start()

    store = FeatureStore.from_settings(own)
    try:
        after = await store.hydrate("u", 10)
        assert after.history == before.history == ["v0", "v1"]
        assert after.tag_profile == pytest.approx(before.tag_profile, rel=1e-6)
        assert [e["event_id"] for e in await streamed(store.redis, store.keys.events)] == [
            "1", "2", "3"]
        out = await store.record_events([ev("1", "v0"), ev("4", "v1")])
        assert [o.status for o in out] == ["duplicate", "accepted"]  # dedupe markers survived
    finally:
        await store.aclose()


async def test_password_is_taken_from_settings(settings: Settings,
                                               redis_servers: ServerPool) -> None:
    server = redis_servers("--requirepass", "s3cret")
    without = settings.model_copy(update={"redis_url": server.url})
    with pytest.raises(redis.AuthenticationError):
        make_redis_sync(without).ping()
    store = FeatureStore.from_settings(without.model_copy(update={"redis_password": "s3cret"}))
    try:
        assert await store.ready() is True
    finally:
        await store.aclose()


def test_redis_target_reads_tls_and_cluster() -> None:
    assert redis_target(Settings(redis_url="redis://h:6379/0")) == ("redis://h:6379/0", False)
    assert redis_target(Settings(redis_url="redis://h:6379/0", redis_tls=True)) == (
        "rediss://h:6379/0", False)
    assert redis_target(Settings(redis_url="redis://h:7000/0?cluster=true")) == (
        "redis://h:7000/0", True)
    assert redis_target(Settings(redis_url="rediss://h:7000/0?cluster=no&x=1")) == (
        "rediss://h:7000/0?x=1", False)
    assert redis_target(Settings(redis_url="redis://h:7000", redis_cluster=True))[1] is True


async def test_serving_client_parses_with_hiredis(settings: Settings) -> None:
    client = make_redis(settings)
    try:
        conn = await client.connection_pool.get_connection()
        await conn.connect()
        assert isinstance(conn._parser, _AsyncHiredisParser)
        await client.connection_pool.release(conn)
    finally:
        await client.aclose()
