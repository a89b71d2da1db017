"""Fixtures for the retrieval tests: the real small bundle (served from a folder of links so
versions can be swapped), a per-test state dir, and the real feature store on the shared Redis
under a key prefix unique to the test (every key under it is deleted afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.feature_store.store import FeatureStore
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix

SHARED_REDIS = "redis://127.0.0.1:6379/0"
TOKEN = "retrieval-test-token"


def link_bundle(src: Path, artifacts_dir: Path, version: str) -> Path:
    """A bundle folder `version` whose files link to `src`'s (a second version, no copy)."""
    dst = artifacts_dir / version
    dst.mkdir(parents=True)
    for f in Path(src).iterdir():
        (dst / f.name).symlink_to(f.resolve())
    return dst


@pytest.fixture(scope="session")
def artifacts(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrieval-artifacts")
    for version in ("ret-a", "ret-b"):
        link_bundle(small_bundle, root, version)
    return root


@pytest.fixture
def settings(artifacts: Path, tmp_path: Path) -> Iterator[Settings]:
    prefix = f"vidrec:test:{uuid.uuid4().hex[:12]}"
    settings = Settings(artifacts_dir=artifacts, bundle="ret-a", state_dir=tmp_path / "state",
                        redis_url=SHARED_REDIS, key_prefix=prefix, redis_cluster=False,
                        admin_token=TOKEN, use_gpu=False, ort_intra_threads=1,
                        ort_inter_threads=1)
    yield settings
    delete_prefix(settings)


@pytest.fixture
def make_store(settings: Settings) -> Callable[[], FeatureStore]:
    """make_store() -> the real Redis feature store. Call it inside the asyncio.run() that uses
    it: its connections belong to that event loop."""
    return lambda: FeatureStore.from_settings(settings)
