"""Fixtures for the gateway tests: the real small bundle loaded into the real Redis under a
unique key prefix, and the gateway app served by a real uvicorn on a loopback port (in a thread
of the test process: one process, real HTTP)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from services.feature_store.loader import load_bundle
from shared.bundle import Bundle
from shared.settings import Settings
from tests.support import free_port

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def users(bundle: Bundle) -> list[str]:
    """Real users with a history, shortest first; each test that changes state takes its own
    position of this order."""
    seqs = bundle.users()
    return sorted((u for u, s in seqs.items() if len(s) >= 5), key=lambda u: (len(seqs[u]), u))


def recs(base: str, user: str, **params) -> dict:
    r = httpx.get(f"{base}/v1/users/{user}/recommendations", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def delete_prefix(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{settings.key_prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()


def gateway_settings(bundle_path: Path, state_dir: Path, **overrides) -> Settings:
    # Generous stage timeouts: the shared 2-core test machine must not flag a healthy stage
    # as degraded because another test hogged the CPU.
    return Settings(artifacts_dir=bundle_path.parent, bundle=bundle_path.name,
                    key_prefix=f"vidrec:test:{uuid.uuid4().hex}", state_dir=state_dir,
                    admin_token=ADMIN_TOKEN, use_gpu=False, feature_store_url=None,
                    retrieval_url=None, ranking_url=None, timeout_hydrate_s=2.0,
                    timeout_retrieve_s=5.0, timeout_score_s=5.0, timeout_items_s=2.0,
                    # Tests send up to 8 requests at once and expect every one answered.
                    **{"max_in_flight": 8, **overrides})


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn in a thread (lifespan included); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio",
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def dead_url():
    """`dead_url("redis")` -> a URL on a loopback port where nothing listens."""
    return lambda scheme="http": f"{scheme}://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def serve_app():
    """`with serve_app(app) as base_url:` runs another app configuration for one test."""
    return serving


@pytest.fixture(scope="session")
def bundle(small_bundle: Path) -> Bundle:
    return Bundle(small_bundle)


@pytest.fixture(scope="session")
def gw_settings(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Settings]:
    settings = gateway_settings(small_bundle, tmp_path_factory.mktemp("gateway-state"))
    load_bundle(settings, settings.bundle, progress=False)
    try:
        yield settings
    finally:
        delete_prefix(settings)


@pytest.fixture(scope="session")
def live(gw_settings: Settings) -> Iterator[str]:
    """Base URL of the gateway with every part in-process."""
    from services.gateway.app import create_app

    with serving(create_app(gw_settings)) as base:
        yield base
