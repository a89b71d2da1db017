"""The candidate ranker end to end on the real small bundle: the features the running ranking
service feeds its model are the ones the build computes offline for the same user and
candidates; its scores are the bundle's ONNX graph's; its explanation names a watched item; a
bundle without it still serves, on the tower's score, flagged `degraded: ["ranker"]`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from offline.ranker_data import candidate_examples
from offline.ranker_eval import BundleRanker, serving_caps
from offline.ranker_fallback import write_tower_only_bundle
from offline.two_stage import BundleModels
from services.gateway.pipeline.context import RecContext, RecRequest
from services.gateway.pipeline.score import Score
from services.ranking.scorer import OnnxRanker
from services.ranking.service import RankingService
from services.retrieval.sources.ann import user_vectors
from shared import ranker_features
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.contracts import Candidate, UserState

# _forget_server_keys: autouse, so the keys the servers started here write are deleted too
from tests.ranking.test_ranking_http import _forget_server_keys as _forget_server_keys
from tests.ranking.test_ranking_http import start_server, wait_ready
from tests.support import stop_process


def offline_problem(bundle: Bundle, settings):
    """A user's history (ids) and candidate set, built as the build builds them."""
    content = bundle.content_embeddings()
    stats = ranker_features.ItemStats.of_bundle(bundle.path, content)
    row_of = bundle.row_of
    seq = next(s for s in bundle.users().values() if len(s) >= 4)
    history = seq[:-1]
    rows = np.array([row_of[i] for i in history], np.int64)
    uv = user_vectors(BundleModels(bundle, settings).state, [rows])
    (ex,) = candidate_examples(bundle.item_vectors(), uv, stats, [rows], np.array([-1]),
                               np.array([0]), serving_caps(settings))
    feats = ranker_features.build(stats, ex.history, ex.rows, ex.source, ex.rank, ex.score)
    return history, ex, feats


@pytest.fixture(scope="module")
def served(small_bundle, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("artifacts")
    (root / "cand").mkdir()
    for f in Path(small_bundle).iterdir():
        (root / "cand" / f.name).symlink_to(f.resolve())
    proc, url = start_server(root, "cand")
    try:
        wait_ready(proc, url)
        yield url, root
    finally:
        stop_process(proc)


def test_service_features_equal_the_offline_ones(served, make_settings) -> None:
    url, root = served
    bundle = Bundle(root / "cand")
    settings = make_settings(root, "cand")
    history, ex, offline = offline_problem(bundle, settings)
    ids = [bundle.items[r]["item_id"] for r in ex.rows.tolist()]
    body = {"requests": [{"history": history, "candidates": ids,
                          "sources": [ranker_features.SOURCES[s] for s in ex.source.tolist()],
                          "source_scores": ex.score.tolist()}], "features": True}
    answer = httpx.post(f"{url}/v1/score", json=body, timeout=30).json()
    assert answer["ranker"] == "candidate"
    online = np.array(answer["features"][0], np.float32)
    assert online.shape == offline.shape == (len(ids), ranker_features.NUM_FEATURES)
    np.testing.assert_allclose(online, offline, rtol=1e-5, atol=1e-5)
    # every feature group carries information for this user (not a column of zeros)
    for group, names in ranker_features.GROUPS.items():
        cols = [ranker_features.FEATURE_NAMES.index(n) for n in names]
        if group != "tags" or any(bundle.items[r]["tags"] for r in ex.rows.tolist()):
            assert np.abs(offline[:, cols]).sum() > 0, group
    # the scores are the bundle graph's on those features
    (expected,) = BundleRanker(bundle, threads=1).score([ex], [offline])
    np.testing.assert_allclose(answer["scores"][0], expected, rtol=1e-4, atol=1e-4)
    # the explanation: the watched item each candidate attended to most
    assert set(answer["attended"][0]) <= set(history[-bundle.max_history:])


def test_a_bundle_without_the_candidate_ranker_serves_the_tower_flagged(
        small_bundle, tmp_path, make_settings) -> None:
    path = write_tower_only_bundle(Path(small_bundle), tmp_path / "tower")
    settings = make_settings(tmp_path, "tower")
    ranker = OnnxRanker(Bundle(path), settings)
    assert ranker.info.kind == "tower"
    service = RankingService(settings, ranker=ranker)
    seq = next(s for s in Bundle(path).users().values() if len(s) >= 4)
    items = [it["item_id"] for it in Bundle(path).items[:20] if it["item_id"] not in seq]
    ctx = RecContext(RecRequest("u"), user_state=UserState(user_id="u", known=True, history=seq))
    ctx.candidates = [Candidate(item_id=i, source="ann", score=0.0) for i in items]
    asyncio.run(Score(service).run(ctx))
    assert ctx.ranked and ctx.degraded == ["ranker"] and not ctx.attended
    # and the scores are the tower's own inner product
    tower = Bundle(path)
    row_of = tower.row_of
    hist = np.array([[row_of[i] + FIRST_ITEM_INDEX for i in seq]], np.int64)
    newest = (hist[0] - FIRST_ITEM_INDEX)[-tower.max_history:]  # what the scorer reads
    uv = user_vectors(BundleModels(tower, settings).state, [newest])[0]
    want = tower.item_vectors()[[row_of[i] for i in items]] @ uv
    got = np.array([ctx.scores[i] for i in items])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_candidate_ranker_without_its_statistics_refuses_to_start(
        small_bundle, tmp_path, make_settings) -> None:
    from services.ranking.errors import RankerLoadError

    dest = tmp_path / "nostats"
    dest.mkdir()
    for f in Path(small_bundle).iterdir():
        if f.name != ranker_features.STATS_FILE:
            (dest / f.name).symlink_to(f.resolve())
    with pytest.raises(RankerLoadError, match=ranker_features.STATS_FILE):
        OnnxRanker(Bundle(dest), make_settings(tmp_path, "nostats"))
    shutil.rmtree(dest)
