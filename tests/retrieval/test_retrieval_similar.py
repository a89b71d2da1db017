"""Similar items ("more like this") over the real small bundle: both spaces against brute force
from the bundle's own files, deleted items never shown, unknown items refused. (Over HTTP:
test_retrieval_http.py.)"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.retrieval.errors import InvalidRequest, ItemNotFound
from services.retrieval.service import RetrievalService
from shared.bundle import Bundle
from shared.settings import Settings


def bundle_of(settings: Settings) -> Bundle:
    return Bundle.open(settings.artifacts_dir, settings.bundle)


def brute_force(bundle: Bundle, item_id: str, k: int) -> dict[str, list[str]]:
    """Top-k cosine neighbours in each space, straight from the bundle's arrays."""
    row = bundle.row_of[item_id]
    vectors = bundle.item_vectors()
    taste = vectors[:, :int(bundle.model_info["dim"])]
    taste = taste / np.linalg.norm(taste, axis=1, keepdims=True)
    content = bundle.content_embeddings()
    out = {}
    for source, table in (("ann", taste), ("content", content)):
        scores = table @ table[row]
        scores[row] = -np.inf
        out[source] = [bundle.items[r]["item_id"] for r in np.argsort(-scores)[:k]]
    return out


def a_popular_item(bundle: Bundle, rank: int = 0) -> str:
    return sorted(bundle.items, key=lambda it: -it["popularity"])[rank]["item_id"]


def test_both_spaces_match_brute_force_interleaved(settings: Settings) -> None:
    bundle = bundle_of(settings)
    item = a_popular_item(bundle)
    k = 10

    async def go():
        service = await RetrievalService.open(settings)
        return await service.similar(item, k)

    got = asyncio.run(go())
    truth = brute_force(bundle, item, k)
    assert len(got) == k and item not in {n.item_id for n in got}
    assert len({n.item_id for n in got}) == k
    by_source = {s: [n.item_id for n in got if n.source == s] for s in ("ann", "content")}
    assert by_source["ann"] and by_source["content"], "both spaces must contribute"
    for source, ids in by_source.items():
        assert set(ids) <= set(truth[source]), source
    # interleaved, best first: the first of each list opens the answer
    assert {got[0].item_id, got[1].item_id} == {truth["ann"][0], truth["content"][0]}
    for source in ("ann", "content"):
        scores = [n.score for n in got if n.source == source]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in scores)  # cosines


def test_deleted_items_are_never_similar_and_have_no_neighbours(settings: Settings) -> None:
    bundle = bundle_of(settings)
    item = a_popular_item(bundle, 1)

    async def go():
        service = await RetrievalService.open(settings)
        before = await service.similar(item, 6)
        victims = [before[0].item_id, before[1].item_id]
        for v in victims:
            await service.delete_item(v)
        after = await service.similar(item, 6)
        with pytest.raises(ItemNotFound):
            await service.similar(victims[0], 5)
        with pytest.raises(ItemNotFound):
            await service.similar("never-existed", 5)
        with pytest.raises(InvalidRequest) as bad_k:
            await service.similar(item, 0)
        return victims, after, bad_k.value.field

    victims, after, field = asyncio.run(go())
    assert len(after) == 6 and not set(victims) & {n.item_id for n in after}
    assert field == "k"
