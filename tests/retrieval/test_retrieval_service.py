"""RetrievalService in-process over the real small bundle: batched multi-source retrieval, ANN
against brute force, upserts and deletes that survive restarts, reload."""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from services.retrieval.errors import InvalidRequest, ItemNotFound
from services.retrieval.overlay import FILE_NAME
from services.retrieval.retrieve import retrieve_steps
from services.retrieval.service import RetrievalService
from services.retrieval.sources import SOURCES
from shared.bundle import FIRST_ITEM_INDEX, Bundle, BundleError
from shared.contracts import Candidate, ItemUpsert, RetrievalQuery, sources_only
from shared.settings import Settings
from shared.sources import MAX_CANDIDATES_PER_SOURCE
from shared.steps import finish
from shared.tags import TagClusters
from shared.text import item_text
from shared.text_encoder import OnnxTextEncoder
from tests.support import arm_frozen_then_freed, loop_turns_during

CAPS = {"ann": 40, "cooc": 20, "content": 20, "tags": 15, "popular": 10}


def bundle_of(settings: Settings) -> Bundle:
    return Bundle.open(settings.artifacts_dir, settings.bundle)


def warm_histories(bundle: Bundle, n: int, length: int = 30) -> list[list[str]]:
    seqs = [s for _, s in sorted(bundle.users().items()) if len(s) > length]
    assert len(seqs) >= n, "the small bundle should have enough long histories"
    return [s[-length:] for s in seqs[:n]]


def tag_profile(bundle: Bundle, history: list[str]) -> dict[str, float]:
    counts = Counter(t for i in history for t in bundle.items[bundle.row_of[i]]["tags"])
    top = counts.most_common(5)
    return {t: c / top[0][1] for t, c in top}


def query_vector(bundle: Bundle, history: list[str]) -> np.ndarray:
    """The user vector computed straight from the bundle files, as docs/bundle.md specifies."""
    content = bundle.content_embeddings()
    rows = np.array([bundle.row_of[i] for i in history][-bundle.max_history:])
    ids = (rows + FIRST_ITEM_INDEX)[None].astype(np.int64)
    sess = ort.InferenceSession(str(bundle.file("query_encoder.onnx")),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"hist_ids": ids, "hist_content": content[rows][None]})[0][0]


def test_batch_returns_every_source_and_never_history_or_excluded(settings) -> None:
    bundle = bundle_of(settings)
    by_popularity = sorted(bundle.items, key=lambda it: -it["popularity"])
    top_popular = [it["item_id"] for it in by_popularity[:5]]
    queries = [RetrievalQuery(history=h, tags=tag_profile(bundle, h),
                              exclude=top_popular + [bundle.items[k]["item_id"] for k in (0, 1)],
                              caps=CAPS)
               for h in warm_histories(bundle, 4)]
    queries.append(RetrievalQuery())  # a brand-new user: nothing but popular items

    async def go():
        service = await RetrievalService.open(settings)
        return await service.retrieve(queries)

    results = asyncio.run(go())
    assert len(results) == len(queries)
    clusters = TagClusters.load(bundle.path)  # tags count by cluster (docs/tags.md)
    item_tags = {it["item_id"]: set(clusters.clusters(it["tags"])) for it in bundle.items}
    for q, r in zip(queries[:-1], results[:-1], strict=True):
        ids = [c.item_id for c in r.candidates]
        # An item proposed by several sources is kept under the first (ann > cooc > content >
        # tags > popular), so a later source may vanish from the merged list when fully overlapped;
        # per_source still shows that each one proposed its full cap.
        assert {"ann", "content"} <= {c.source for c in r.candidates} <= set(CAPS)
        assert r.per_source == CAPS  # every source filled its cap after removals
        assert len(ids) == len(set(ids))
        assert not set(ids) & (set(q.history) | set(q.exclude))
        for c in r.candidates:
            assert c.nearest_history in q.history
            assert set(c.matched_tags) == item_tags[c.item_id] & set(clusters.clusters(q.tags))
            if c.source == "tags":
                assert c.matched_tags
        ann_scores = [c.score for c in r.candidates if c.source == "ann"]
        assert ann_scores == sorted(ann_scores, reverse=True)
    cold = results[-1]
    assert {c.source for c in cold.candidates} == {"popular"}
    assert cold.per_source == sources_only(popular=settings.candidate_caps["popular"])
    expected = sorted((it["popularity"] for it in bundle.items), reverse=True)
    assert [c.score for c in cold.candidates] == expected[:settings.candidate_caps["popular"]]


def test_in_process_retrieval_gives_the_loop_a_turn_per_source_and_answers_the_same(
        settings) -> None:
    # The one-process gateway awaits `retrieve` on its event loop: a pause after each source
    # and before assembly (shared/steps.py), so requests arriving meanwhile are read (or
    # refused) without waiting for the whole read path; the answer is retrieve_now's.
    bundle = bundle_of(settings)
    queries = [RetrievalQuery(history=h, tags=tag_profile(bundle, h), caps=CAPS)
               for h in warm_histories(bundle, 2)]

    async def go():
        service = await RetrievalService.open(settings)
        stepped, turns = await loop_turns_during(service.retrieve(queries))
        at_once, _ = service.retrieve_now(queries)
        return stepped, turns, at_once

    stepped, turns, at_once = asyncio.run(go())
    assert turns >= len(SOURCES)
    assert [r.model_dump() for r in stepped] == [r.model_dump() for r in at_once]


def test_a_write_during_a_paused_read_restarts_it_on_the_new_catalogue(settings) -> None:
    # A delete lands while an in-process read is paused after its first source (ann): what
    # ann found before the delete must not be answered; the read starts again.
    bundle = bundle_of(settings)
    query = RetrievalQuery(history=warm_histories(bundle, 1)[0], caps=CAPS)

    async def go():
        service = await RetrievalService.open(settings)
        state = service.state
        (before,), _ = service.retrieve_now([query])
        victim = next(c.item_id for c in before.candidates if c.source == "ann")
        steps = retrieve_steps(state, [query], service.default_caps)
        next(steps)  # paused after the ann source searched
        await service.delete_item(victim)
        (during,) = finish(steps)
        (after,), _ = service.retrieve_now([query])
        return victim, during, after

    victim, during, after = asyncio.run(go())
    assert victim not in {c.item_id for c in during.candidates}
    assert during.model_dump() == after.model_dump()


def test_ann_candidates_match_brute_force_over_item_vectors(settings) -> None:
    bundle = bundle_of(settings)
    vectors = bundle.item_vectors()
    histories = warm_histories(bundle, 3)
    exclude = [bundle.items[k]["item_id"] for k in range(0, 300, 7)]
    caps = sources_only(ann=100)

    async def go():
        service = await RetrievalService.open(settings)
        return await service.retrieve([RetrievalQuery(history=h, exclude=exclude, caps=caps)
                                       for h in histories])

    results = asyncio.run(go())
    for history, result in zip(histories, results, strict=True):
        scores = vectors @ query_vector(bundle, history)
        blocked = [bundle.row_of[i] for i in history + exclude]
        scores[blocked] = -np.inf
        order = np.argsort(-scores, kind="stable")[:100]
        got = [c for c in result.candidates if c.source == "ann"]
        assert len(got) == 100
        np.testing.assert_allclose([c.score for c in got], scores[order], rtol=1e-4, atol=1e-4)
        # The same items, up to the order of near-ties.
        expected_ids = {bundle.items[r]["item_id"] for r in order}
        assert len({c.item_id for c in got} ^ expected_ids) <= 2


def test_upsert_is_found_survives_restart_and_delete_removes_it(settings, make_store) -> None:
    bundle = bundle_of(settings)
    twin = warm_histories(bundle, 1)[0][-1]
    # The new item gets exactly this item's content embedding; a user who watched only the twin
    # has it as content query, so the new item must come first (cosine 1).
    twin_embedding = bundle.content_embeddings()[bundle.row_of[twin]].tolist()
    caps = sources_only(content=10)
    query = RetrievalQuery(history=[twin], caps=caps)

    async def go():
        store = make_store()
        try:
            service = await RetrievalService.open(settings, item_store=store)
            meta = await service.upsert_item("new-video-1", ItemUpsert(
                title="A brand new video", tags=["Drama", "new"], embedding=twin_embedding))
            (found,) = await service.retrieve([query])
            stored = await store.item_meta(["new-video-1"])
            restarted = await RetrievalService.open(settings, item_store=store)
            (after_restart,) = await restarted.retrieve([query])
            await restarted.delete_item("new-video-1")
            (after_delete,) = await restarted.retrieve([query])
            stored_after_delete = await store.item_meta(["new-video-1"])
            again = await RetrievalService.open(settings, item_store=store)
            (after_delete_restart,) = await again.retrieve([query])
            return (meta, found, stored, after_restart, after_delete, stored_after_delete,
                    after_delete_restart)
        finally:
            await store.aclose()

    (meta, found, stored, after_restart, after_delete, stored_after_delete,
     after_delete_restart) = asyncio.run(go())
    assert meta.tags == ["drama", "new"] and meta.available
    for result in (found, after_restart):
        top = result.candidates[0]
        assert (top.item_id, top.source) == ("new-video-1", "content")
        assert top.score == pytest.approx(1.0, abs=1e-4)
        assert top.nearest_history == twin
    assert stored["new-video-1"].title == "A brand new video"
    for result in (after_delete, after_delete_restart):
        assert "new-video-1" not in {c.item_id for c in result.candidates}
        assert len(result.candidates) == 10  # the cap is still filled
    assert stored_after_delete["new-video-1"].available is False


def test_bad_upserts_name_the_field(settings) -> None:
    async def go():
        service = await RetrievalService.open(settings)
        errors = []
        for item_id, body in (
                ("x1", ItemUpsert(title="t", embedding=[0.1] * 7)),
                ("x2", ItemUpsert(title="t", embedding=[0.0] * service.state.content_dim)),
                (" padded", ItemUpsert(title="t"))):
            with pytest.raises(InvalidRequest) as exc:
                await service.upsert_item(item_id, body)
            errors.append(exc.value)
        with pytest.raises(ItemNotFound):
            await service.delete_item("never-existed")
        with pytest.raises(InvalidRequest) as exc:
            await service.retrieve([RetrievalQuery(caps={"ann": -1})])
        return errors + [exc.value], service.state.n_rows, service.state.n_bundle

    errors, rows, n_bundle = asyncio.run(go())
    assert [e.field for e in errors] == ["embedding", "embedding", "item_id", "queries[0].caps.ann"]
    assert "expected 384" in errors[0].problem and "got 7" in errors[0].problem
    assert rows == n_bundle  # nothing was added by the rejected calls


def test_computed_embedding_and_reupsert_of_a_bundle_item(settings, small_bundle: Path) -> None:
    bundle = bundle_of(settings)
    existing = bundle.items[3]
    row = bundle.row_of[existing["item_id"]]
    item_enc = ort.InferenceSession(str(bundle.file("item_encoder.onnx")),
                                    providers=["CPUExecutionProvider"])
    text_encoder = OnnxTextEncoder(small_bundle)
    new_title, new_tags = "Space cowboys on a comet", ["sci-fi", "western"]

    async def go():
        service = await RetrievalService.open(settings)
        await service.upsert_item("fresh-1", ItemUpsert(title=new_title, tags=new_tags))
        await service.upsert_item(existing["item_id"], ItemUpsert(
            title=existing["title"] + " (remastered)", tags=existing["tags"]))
        s = service.state
        fresh, old = s.row_of["fresh-1"], s.row_of[existing["item_id"]]
        return (s.content.view[fresh].copy(), s.vectors.view[fresh].copy(),
                s.model_index.view[[fresh, old]].tolist(), s.content.view[old].copy(),
                s.vectors.view[old].copy(), bool(s.dead.view[row]), old)

    (fresh_content, fresh_vec, indexes, old_content, old_vec, row_dead,
     new_row) = asyncio.run(go())
    expected = text_encoder.encode([item_text(new_title, new_tags)])[0]
    np.testing.assert_allclose(fresh_content, expected, atol=1e-6)
    assert indexes == [1, row + FIRST_ITEM_INDEX]  # new: unknown to the model; old: its own id
    want = item_enc.run(None, {"item_ids": np.array([1, row + FIRST_ITEM_INDEX]),
                               "item_content": np.stack([fresh_content, old_content])})[0]
    np.testing.assert_allclose(np.stack([fresh_vec, old_vec]), want, atol=1e-5)
    assert row_dead and new_row != row  # the old version is gone from the indexes


def popular_of(service: RetrievalService, n: int, exclude: list[str] | None = None
               ) -> list[Candidate]:
    """The popular source alone, through the public retrieve path."""
    query = RetrievalQuery(exclude=exclude or [], caps=sources_only(popular=n))
    results, _ = service.retrieve_now([query])
    return results[0].candidates


def test_restart_recovers_from_redis_when_the_overlay_file_is_lost(settings, make_store) -> None:
    bundle = bundle_of(settings)
    victim = bundle.items[0]["item_id"]
    embedding = bundle.content_embeddings()[5].tolist()

    async def go():
        store = make_store()
        try:
            service = await RetrievalService.open(settings, item_store=store)
            await service.upsert_item("kept-in-redis", ItemUpsert(title="t", embedding=embedding))
            await service.delete_item(victim)
            (settings.state_dir / FILE_NAME).unlink()
            restarted = await RetrievalService.open(settings, item_store=store)
            return restarted.state, popular_of(restarted, MAX_CANDIDATES_PER_SOURCE)
        finally:
            await store.aclose()

    state, popular = asyncio.run(go())
    assert "kept-in-redis" in state.row_of and not state.dead.view[state.row_of["kept-in-redis"]]
    assert state.dead.view[state.row_of[victim]]
    assert victim not in {c.item_id for c in popular}
    # the popular source ranks the recovered item (past the cap of one query in a big bundle)
    assert state.row_of["kept-in-redis"] in state.popular_rows.tolist()


def test_reload_swaps_bundle_and_replays_changes(settings) -> None:
    bundle = bundle_of(settings)
    embedding = bundle.content_embeddings()[9].tolist()

    async def go():
        service = await RetrievalService.open(settings)
        await service.upsert_item("survivor", ItemUpsert(title="t", embedding=embedding))
        before = service.state
        version = await service.reload("ret-b")
        after = service.state
        with pytest.raises(BundleError):
            await service.reload("no-such-bundle")
        return before, version, after, service.state

    before, version, after, still = asyncio.run(go())
    assert (before.version, version, after.version) == ("ret-a", "ret-b", "ret-b")
    assert still is after  # a failed reload leaves the served state alone
    assert "survivor" in after.row_of and after.overlay_applied == 1


def test_popular_excludes_and_orders(settings) -> None:
    bundle = bundle_of(settings)
    ranked = sorted(bundle.items, key=lambda it: -it["popularity"])

    async def go():
        service = await RetrievalService.open(settings)
        return popular_of(service, 5, exclude=[ranked[0]["item_id"]])

    got = asyncio.run(go())
    assert len(got) == 5 and ranked[0]["item_id"] not in {c.item_id for c in got}
    assert [c.score for c in got] == [it["popularity"] for it in ranked[1:6]]


def test_deleted_bundle_items_leave_every_source(settings) -> None:
    bundle = bundle_of(settings)
    history = warm_histories(bundle, 1)[0]
    tags = tag_profile(bundle, history)
    query = RetrievalQuery(history=history, tags=tags, caps=CAPS)

    async def go():
        service = await RetrievalService.open(settings)
        (before,) = await service.retrieve([query])
        victims = {}  # the first candidate of every source
        for c in before.candidates:
            victims.setdefault(c.source, c.item_id)
        for item_id in victims.values():
            await service.delete_item(item_id)
        await service.delete_item(next(iter(victims.values())))  # deleting twice is harmless
        (after,) = await service.retrieve([query])
        return victims, after

    victims, after = asyncio.run(go())
    assert {"ann", "content"} <= set(victims) <= set(CAPS)  # see the merge note above
    assert not set(victims.values()) & {c.item_id for c in after.candidates}
    assert after.per_source == CAPS


def test_hnsw_index_hides_deleted_and_replaced_rows(settings, tmp_path: Path) -> None:
    """An HNSW index cannot remove rows; they must still never come back, caps still full."""
    from shared import ann

    src = bundle_of(settings).path
    hnsw_dir = settings.artifacts_dir / f"hnsw-{tmp_path.name}"
    hnsw_dir.mkdir()
    for f in src.iterdir():
        if f.name != "index_ann.faiss":
            (hnsw_dir / f.name).symlink_to(f.resolve())
    bundle = Bundle(hnsw_dir)
    ann.save(ann.build_index(bundle.item_vectors(), kind="hnsw"), hnsw_dir / "index_ann.faiss")
    history = warm_histories(bundle, 1)[0]
    caps = sources_only(ann=30)
    query = RetrievalQuery(history=history, caps=caps)

    async def go():
        service = await RetrievalService.open(settings, version=hnsw_dir.name)
        (before,) = await service.retrieve([query])
        gone = [c.item_id for c in before.candidates[:5]]
        for item_id in gone[:3]:
            await service.delete_item(item_id)
        for item_id in gone[3:]:  # replaced: a new row, the old one stays in HNSW
            await service.upsert_item(item_id, ItemUpsert(
                title="replaced", embedding=bundle.content_embeddings()[0].tolist()))
        (after,) = await service.retrieve([query])
        return service.readiness(), gone, after, service.state

    ready, gone, after, state = asyncio.run(go())
    assert ready["index"] == "hnsw" and state.dead_in_index == 5
    got = [c.item_id for c in after.candidates]
    assert len(got) == 30 and not set(gone[:3]) & set(got)
    # A replaced item may be proposed again, but only through its new row's vector.
    user = query_vector(bundle, history)
    for c in after.candidates:
        row = state.row_of[c.item_id]
        assert c.score == pytest.approx(float(state.vectors.view[row] @ user), abs=1e-3)


def test_restart_restores_what_a_flushed_redis_lost(settings, make_store) -> None:
    """Redis without persistence restarted empty: the overlay file puts the items back."""
    embedding = bundle_of(settings).content_embeddings()[11].tolist()
    victim = bundle_of(settings).items[2]["item_id"]

    async def go():
        store = make_store()
        try:
            service = await RetrievalService.open(settings, item_store=store)
            await service.upsert_item("lost-in-redis", ItemUpsert(title="Kept", tags=["x"],
                                                                  embedding=embedding))
            await service.delete_item(victim)
            keys = [k async for k in store.redis.scan_iter(match=f"{settings.key_prefix}:*")]
            await store.redis.delete(*keys)  # what a restart of a non-persistent Redis leaves
            assert await store.overlay_items() == []
            await RetrievalService.open(settings, item_store=store)
            return await store.item_meta(["lost-in-redis"]), await store.overlay_items()
        finally:
            await store.aclose()

    meta, overlay = asyncio.run(go())
    assert meta["lost-in-redis"].title == "Kept" and meta["lost-in-redis"].tags == ["x"]
    by_id = {e.meta.item_id: e for e in overlay}
    assert by_id["lost-in-redis"].embedding is not None
    assert by_id[victim].meta.available is False


def test_a_reload_frees_the_previous_state(settings) -> None:
    """Each reload freezes what it loaded out of the garbage collector's passes
    (shared/memory.py freeze_loaded), so a replaced state must be freed by reference counting
    alone: one held through a reference cycle would stay for good, every reload."""

    async def go():
        service = await RetrievalService.open(settings)
        first = weakref.ref(service.state)
        await service.reload("ret-b")
        await service.reload("ret-a")
        return first, service

    first, service = asyncio.run(go())
    assert service.state.version == "ret-a"
    assert first() is None


def test_an_arms_state_is_frozen_when_loaded_and_freed_when_dropped(settings) -> None:
    """Experiment arms' bundles (serve_bundles) are moved out of the collector's passes like
    the main one, and freed by reference counting once no arm names them."""
    import gc

    async def go():
        service = await RetrievalService.open(settings)
        return await arm_frozen_then_freed(service, "ret-b", lambda: service._extra["ret-b"])

    try:
        frozen, arm = asyncio.run(go())
    finally:
        gc.unfreeze()  # leave the test process as it was
    assert frozen > 0
    assert arm() is None
