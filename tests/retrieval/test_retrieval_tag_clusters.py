"""Retrieval by tag cluster on the real small bundle, with clusters written for the test (the
bundle's own genres are all different things): the tag source matches clusters, free-text
interests are embedded with the bundle's ONNX text encoder, an upserted item's new tag joins
its nearest cluster, and a bundle without tags.json matches exact tags as before."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from services.retrieval.service import RetrievalService
from shared.contracts import ItemUpsert, RetrievalQuery
from shared.settings import Settings
from shared.tags import LEADERS_FILE, TAGS_FILE, TagClusters, canonical
from shared.text_encoder import OnnxTextEncoder
from tests.retrieval.conftest import link_bundle

# thriller, horror and mystery: one cluster named after thriller (made up for the test)
MERGED = ("thriller", "horror", "mystery")


def write_clusters(bundle_dir: Path, encoder: OnnxTextEncoder) -> dict[str, str]:
    items = json.loads((bundle_dir / "items.json").read_text())
    tags = sorted({t for it in items for t in it["tags"]})
    assert set(MERGED) <= set(tags)
    names = [t for t in tags if t not in MERGED[1:]]
    cluster_of = {t: ("thriller" if t in MERGED else t) for t in tags}
    doc = {"format": 1, "threshold": 0.75, "encoder": "test", "words": {},
           "clusters": [{"id": i, "name": n, "items": 0,
                         "tags": [t for t in tags if cluster_of[t] == n]}
                        for i, n in enumerate(names)],
           "tags": {t: names.index(c) for t, c in cluster_of.items()}}
    (bundle_dir / TAGS_FILE).unlink(missing_ok=True)
    (bundle_dir / LEADERS_FILE).unlink(missing_ok=True)
    (bundle_dir / TAGS_FILE).write_text(json.dumps(doc))
    np.save(bundle_dir / LEADERS_FILE, encoder.encode([canonical(n) for n in names]))
    return cluster_of


@pytest.fixture(scope="module")
def clustered(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clustered-artifacts")
    bundle = link_bundle(small_bundle, root, "clustered")
    write_clusters(bundle, OnnxTextEncoder(small_bundle))
    plain = link_bundle(small_bundle, root, "plain")
    for name in (TAGS_FILE, LEADERS_FILE, "tags.md"):
        (plain / name).unlink(missing_ok=True)
    return root


@pytest.fixture
def cluster_settings(settings: Settings, clustered: Path) -> Settings:
    return settings.model_copy(update={"artifacts_dir": clustered, "bundle": "clustered"})


def test_the_tag_source_matches_every_tag_of_a_cluster(cluster_settings: Settings) -> None:
    async def go(version: str):
        service = await RetrievalService.open(cluster_settings, version=version)
        (result,) = await service.retrieve([RetrievalQuery(
            tags={"horror": 1.0}, caps={"ann": 0, "content": 0, "tags": 2000, "popular": 0})])
        return service.state, result

    state, result = asyncio.run(go("clustered"))
    tags_of = dict(zip(state.item_ids, state.tags, strict=True))
    got = {c.item_id for c in result.candidates}
    expect = {i for i, tags in tags_of.items() if set(tags) & set(MERGED)}
    assert got == expect
    assert any("horror" not in tags_of[i] for i in got)  # found through the cluster
    assert {tuple(c.matched_tags) for c in result.candidates} == {("thriller",)}
    assert result.resolved_tags == {"horror": ["thriller"]}  # named by its cluster

    # the same bundle without tags.json: exact tags, as before clusters existed
    state, result = asyncio.run(go("plain"))
    assert not state.tag_clusters.enabled
    assert {c.item_id for c in result.candidates} == {
        i for i, tags in tags_of.items() if "horror" in tags}
    assert {tuple(c.matched_tags) for c in result.candidates} == {("horror",)}
    assert result.resolved_tags == {}


def test_a_free_text_interest_is_embedded_and_matched(cluster_settings: Settings) -> None:
    async def go():
        service = await RetrievalService.open(cluster_settings)
        return await service.retrieve([
            RetrievalQuery(tags={"scary horror films": 1.0},
                           caps={"ann": 0, "content": 0, "tags": 50, "popular": 0}),
            RetrievalQuery(tags={"zzqx": 1.0},
                           caps={"ann": 0, "content": 0, "tags": 50, "popular": 0})])

    scary, nonsense = asyncio.run(go())
    assert "thriller" in scary.resolved_tags["scary horror films"]
    assert scary.candidates and all(c.matched_tags for c in scary.candidates)
    assert nonsense.resolved_tags == {"zzqx": []} and nonsense.candidates == []


def test_an_upserted_items_new_tag_joins_its_nearest_cluster(cluster_settings: Settings,
                                                             small_bundle: Path) -> None:
    encoder = OnnxTextEncoder(small_bundle)
    offline = TagClusters.load(cluster_settings.artifacts_dir / "clustered")

    async def go():
        service = await RetrievalService.open(cluster_settings)
        meta = await service.upsert_item("new-1", ItemUpsert(
            title="A new film", tags=["thriller film", "Sci-Fi", "kittens playing"]))
        (result,) = await service.retrieve([RetrievalQuery(
            tags={"thriller": 1.0}, caps={"ann": 0, "content": 0, "tags": 2000, "popular": 0})])
        return meta, result

    meta, result = asyncio.run(go())
    # the same answer as the rule applied to the bundle's leaders with the same encoder
    assert meta.clusters == offline.assign(meta.tags, encoder)
    assert meta.clusters[:2] == ["thriller", "sci-fi"]
    assert "new-1" in {c.item_id for c in result.candidates}


def test_items_matching_more_interests_come_first_then_the_popular(
        cluster_settings: Settings) -> None:
    """A new user's stated interests: the items matching both clusters lead, however far down
    either cluster's popularity order they are (the whole matched set is scored)."""
    async def go(cap: int):
        service = await RetrievalService.open(cluster_settings)
        (result,) = await service.retrieve([RetrievalQuery(
            tags={"horror": 1.0, "sci-fi": 1.0},
            caps={"ann": 0, "content": 0, "tags": cap, "popular": 0})])
        return service.state, result

    state, everything = asyncio.run(go(2000))
    popularity = dict(zip(state.item_ids, state.popularity.view.tolist(), strict=True))
    tags_of = dict(zip(state.item_ids, state.tags, strict=True))
    both = [i for i, tags in tags_of.items()
            if set(tags) & set(MERGED) and "sci-fi" in tags]
    assert len(both) >= 3
    ids = [c.item_id for c in everything.candidates]
    assert set(ids[:len(both)]) == set(both)  # two interests matched before one
    assert [c.score for c in everything.candidates[:len(both)]] == [2.0] * len(both)
    one = ids[len(both):]
    assert one and all(c.score == 1.0 for c in everything.candidates[len(both):])
    # inside each group the two clusters take turns (an item's place in its best matched
    # cluster's popularity order), popularity breaking ties (services/retrieval/sources/tags.py)
    place: dict[str, int] = {}
    for cluster in ("thriller", "sci-fi"):
        for k, row in enumerate(state.tag_rows[cluster].tolist()):
            item = state.item_ids[row]
            place[item] = min(place.get(item, k), k)
    for group in (ids[:len(both)], one):
        keys = [(place[i], -popularity[i]) for i in group]
        assert keys == sorted(keys)
    # the first two single matches: one of each cluster, whatever their popularity
    assert {"sci-fi" in tags_of[i] for i in one[:2]} == {True, False}

    # a small cap keeps the items matching both even when neither cluster's most popular
    # `cap` items hold them
    state, few = asyncio.run(go(len(both)))
    assert {c.item_id for c in few.candidates} == set(both)
    heads = {i for cluster in ("thriller", "sci-fi")
             for i in (state.item_ids[r] for r in state.tag_rows[cluster][:len(both)].tolist())}
    assert set(both) - heads  # the old per-cluster head would have missed some
