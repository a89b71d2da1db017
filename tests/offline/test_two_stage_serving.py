"""The offline two-stage evaluation measures the candidates the service proposes: for the same
users and bundle, offline/two_stage.py returns exactly what the gateway's hydrate and retrieve
stages get from the retrieval service (real Redis loaded by `vidrec load`, real FAISS and ONNX),
every source included (the tag source too), in the same order: both the candidate ranker's
budget (what a user with a history is asked for, the default) and every source's full cap
(what a request with tag filters is asked for)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np

from offline.two_stage import BundleModels, candidates_for
from services.feature_store.keys import Keys
from services.feature_store.loader import load_bundle
from services.feature_store.store import FeatureStore
from services.gateway.catalog import Catalog
from services.gateway.pipeline import RecContext, RecRequest
from services.gateway.pipeline.hydrate import Hydrate
from services.gateway.pipeline.retrieve import Retrieve
from services.retrieval.service import RetrievalService
from services.retrieval.sources import SOURCES
from shared.bundle import Bundle
from shared.redis_conn import make_redis
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix


def _online(settings: Settings, users: list[str], catalog: Catalog,
            exclude_tags: frozenset[str]) -> list[tuple[list[str], dict[str, int]]]:
    async def go() -> list[tuple[list[str], dict[str, int]]]:
        redis = make_redis(settings)
        # the import's reference time: the tag profile read back undecayed, as offline has it
        ref = float(await redis.get(Keys(settings.key_prefix).tagref(users[0])))
        store = FeatureStore(redis, settings, clock=lambda: ref)
        service = await RetrievalService.open(settings)
        out = []
        try:
            for user in users:
                ctx = RecContext(RecRequest(user, k=10, exclude_tags=exclude_tags))
                await Hydrate(store, settings.history_len).run(ctx)
                await Retrieve(service, settings.candidate_caps, catalog, None,
                               settings.ranker_caps).run(ctx)
                out.append(([c.item_id for c in ctx.candidates], ctx.per_source))
        finally:
            await redis.aclose()
        return out

    return asyncio.run(go())


def test_offline_candidates_are_the_services(small_bundle: Path, tmp_path: Path) -> None:
    settings = Settings(artifacts_dir=small_bundle.parent, bundle=small_bundle.name,
                        key_prefix=f"vidrec:test:{uuid.uuid4().hex}", state_dir=tmp_path,
                        use_gpu=False, candidate_caps={"tags": 30})
    bundle = Bundle(small_bundle)
    seqs = bundle.users()
    # users of every history length: short (the tag profile matters), median, longest
    by_len = sorted((u for u in seqs if seqs[u]), key=lambda u: (len(seqs[u]), u))
    users = [by_len[i] for i in np.linspace(0, len(by_len) - 1, 10).astype(int)]
    catalog = Catalog.from_bundle(bundle)
    assert catalog.candidate_ranker  # the small bundle is built with one
    load_bundle(settings, settings.bundle, progress=False)
    try:
        # a user with a history: the candidate ranker's budget of each source
        ranked = _online(settings, users, catalog, frozenset())
        # a tag filter: the stage asks every source its full cap (no head cut)
        full = _online(settings, users, catalog, frozenset({"no-such"}))
    finally:
        delete_prefix(settings)

    models = BundleModels(bundle, settings)
    ids = models.state.item_ids
    for online, caps in [(ranked, None), (full, settings.candidate_caps)]:
        by_source: dict[str, list[np.ndarray]] = {}
        # one user per call, as the gateway asks: the query encoder pads a batch to its longest
        # history, which moves user vectors by float rounding and can swap near-ties at a cap
        offline = [candidates_for(models, [seqs[u]], settings, by_source, caps)[0]
                   for u in users]
        assert set(by_source) == {s.name for s in SOURCES}
        for i, (user, (online_ids, per_source)) in enumerate(zip(users, online, strict=True)):
            assert [ids[r] for r in offline[i].tolist()] == online_ids, user
            assert {name: len(lists[i]) for name, lists in by_source.items()} == per_source, user
            assert not set(online_ids) & set(seqs[user])  # seen items are never candidates
        # the tag source took part (the old offline copy left it out)
        assert sum(len(rows) for rows in by_source["tags"]) > 0
    # the budget is the head of each source's list: fewer candidates, each one also in full
    for (budget_ids, _), (full_ids, _) in zip(ranked, full, strict=True):
        assert len(budget_ids) < len(full_ids) and set(budget_ids) <= set(full_ids)
