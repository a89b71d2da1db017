"""RankingService in-process on the real small bundle: RankingAPI, atomic reload, new items'
content from the feature store's real Redis overlay, degrading when that is unreachable."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
import weakref
from pathlib import Path

import numpy as np
import pytest

from services.feature_store.store import FeatureStore
from services.ranking.errors import RankerLoadError
from services.ranking.new_items import RedisOverlayContent
from services.ranking.scorer import OnnxRanker
from services.ranking.service import RankingService
from shared.bundle import Bundle
from shared.contracts import ItemMeta, ScoreItem, ServiceUnavailable
from shared.observability import DEGRADED
from shared.redis_conn import make_redis
from tests.support import arm_frozen_then_freed, loop_turns_during


@pytest.fixture
def artifacts(small_bundle, tmp_path: Path, copy_bundle) -> Path:
    """Two versions of the small bundle side by side, for reloads."""
    for version in ("rank-a", "rank-b"):
        copy_bundle(Path(small_bundle), tmp_path / "artifacts", version)
    return tmp_path / "artifacts"


@pytest.fixture
def bundle(small_bundle) -> Bundle:
    return Bundle(Path(small_bundle))


def requests_for(bundle: Bundle, extra: list[str] | None = None) -> list[ScoreItem]:
    users = [s for s in bundle.users().values() if len(s) >= 3][:3]
    ids = [it["item_id"] for it in bundle.items]
    return [ScoreItem(history=u[:-1], candidates=[*ids[i * 7: i * 7 + 20], *(extra or [])])
            for i, u in enumerate(users)]


def test_score_implements_the_ranking_api(artifacts, bundle, make_settings) -> None:
    settings = make_settings(artifacts, "rank-a")
    reqs = requests_for(bundle)

    async def go():
        service = RankingService(settings)
        assert await service.ready() is False
        with pytest.raises(ServiceUnavailable, match="no model"):
            await service.score(reqs)
        assert await service.reload() == "rank-a"
        assert await service.ready() is True
        # scoring pauses for the event loop before running the model (shared/steps.py)
        answer, turns = await loop_turns_during(service.score(reqs))
        assert turns >= 1
        return answer

    scores, version = asyncio.run(go())
    assert version == "rank-a"
    expected = OnnxRanker(Bundle(artifacts / "rank-a"), settings).score(
        [r.history for r in reqs], [r.candidates for r in reqs])
    assert [len(s) for s in scores] == [len(r.candidates) for r in reqs]
    for got, want in zip(scores, expected, strict=True):
        assert all(isinstance(x, float) for x in got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reload_swaps_while_requests_keep_being_answered(artifacts, bundle,
                                                         make_settings) -> None:
    reqs = requests_for(bundle)

    async def go():
        service = RankingService(make_settings(artifacts, "rank-a"))
        await service.reload()
        versions: list[str] = []

        async def keep_scoring():
            for _ in range(30):
                versions.append((await service.score(reqs))[1])

        scoring = asyncio.create_task(keep_scoring())
        assert await service.reload("rank-b") == "rank-b"
        await scoring
        # a failed reload leaves the running model in place
        with pytest.raises(RankerLoadError, match="no-such-bundle"):
            await service.reload("no-such-bundle")
        after = await service.score(reqs)
        return versions, after[1], service.info.version

    versions, after, info_version = asyncio.run(go())
    assert len(versions) == 30 and set(versions) <= {"rank-a", "rank-b"}
    assert after == info_version == "rank-b"


def test_new_items_take_their_content_from_the_redis_overlay(artifacts, bundle,
                                                             make_settings) -> None:
    settings = make_settings(artifacts, "rank-a", key_prefix=f"vidrec:test:{uuid.uuid4().hex}")
    donor_row = 5
    donor = bundle.content_embeddings()[donor_row]
    reqs = requests_for(bundle, extra=["live-upload", "other-new"])

    async def go():
        store = FeatureStore(make_redis(settings), settings)
        overlay = RedisOverlayContent.from_settings(settings)
        service = RankingService(settings, new_item_content=overlay)
        await service.reload()
        try:
            await store.put_item(ItemMeta(item_id="live-upload", title="t", tags=[]),
                                 embedding=donor.tolist())
            return await service.score(reqs), await overlay(["live-upload", "absent"])
        finally:
            await overlay.aclose()
            keys = [k async for k in store.redis.scan_iter(match=f"{settings.key_prefix}:*")]
            if keys:
                await store.redis.delete(*keys)
            await store.aclose()

    (scores, _), found = asyncio.run(go())
    assert list(found) == ["live-upload"]
    ranker = OnnxRanker(Bundle(artifacts / "rank-a"), settings)
    expected = ranker.score([r.history for r in reqs], [r.candidates for r in reqs],
                            {"live-upload": donor})
    for got, want in zip(scores, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the upserted item's content made a difference; the one without content did not get any
    assert abs(scores[0][-2] - scores[0][-1]) > 1e-4


def test_unreachable_overlay_degrades_to_zero_content(artifacts, bundle,
                                                      make_settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    settings = make_settings(artifacts, "rank-a", redis_url=f"redis://127.0.0.1:{dead}/0",
                             timeout_items_s=2.0)
    reqs = requests_for(bundle, extra=["live-upload"])
    before = DEGRADED.labels("ranking", "new_item_content")._value.get()

    async def go():
        overlay = RedisOverlayContent.from_settings(settings)
        service = RankingService(settings, new_item_content=overlay)
        await service.reload()
        try:
            return await service.score(reqs)
        finally:
            await overlay.aclose()

    scores, version = asyncio.run(go())
    assert version == "rank-a"
    assert [len(s) for s in scores] == [len(r.candidates) for r in reqs]
    expected = OnnxRanker(Bundle(artifacts / "rank-a"), settings).score(
        [r.history for r in reqs], [r.candidates for r in reqs])
    np.testing.assert_allclose(scores[0], expected[0], rtol=1e-5, atol=1e-5)
    assert DEGRADED.labels("ranking", "new_item_content")._value.get() == before + 1


def test_a_reload_frees_the_previous_model(artifacts, make_settings) -> None:
    """Reloads freeze what they loaded out of the collector's passes (shared/memory.py
    freeze_loaded): a replaced model must be freed by reference counting alone."""

    async def go():
        service = RankingService(make_settings(artifacts, "rank-a"))
        await service.reload()
        first = weakref.ref(service._ranker)
        await service.reload("rank-b")
        await service.reload("rank-a")
        return first, service

    first, service = asyncio.run(go())
    assert service.info is not None and service.info.version == "rank-a"
    assert first() is None


def test_the_service_keeps_numpy_to_one_blas_thread() -> None:
    """Its features' matrix products are too small to gain from more; in a process of its own
    the idle helper thread spun for 0.4 of a core (docs/capacity.md). Checked in a fresh
    process: in this one, another test may already have set the limit."""
    code = ("from threadpoolctl import threadpool_info\n"
            "from services.ranking.service import RankingService\n"
            "from shared.settings import Settings\n"
            "blas = lambda: [p['num_threads'] for p in threadpool_info() "
            "if p['user_api'] == 'blas']\n"
            "before = blas()\n"
            "RankingService(Settings())\n"
            "print(before, blas())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("]")
    before, after = out[0] + "]", out[1].strip() + "]"
    assert after == "[1]", (before, after)
    assert os.cpu_count() == 1 or before != "[1]", "the check needs a multi-threaded BLAS first"


def test_an_arms_model_is_frozen_when_loaded_and_freed_when_dropped(artifacts,
                                                                    make_settings) -> None:
    """Experiment arms' bundles (serve_bundles) are moved out of the collector's passes like
    the main one, and freed by reference counting once no arm names them."""
    import gc

    async def go():
        service = RankingService(make_settings(artifacts, "rank-a"))
        await service.reload()
        return await arm_frozen_then_freed(service, "rank-b", lambda: service._extra["rank-b"])

    try:
        frozen, arm = asyncio.run(go())
    finally:
        gc.unfreeze()  # leave the test process as it was
    assert frozen > 0
    assert arm() is None
