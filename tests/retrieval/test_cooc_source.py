"""The cooc source: what other people watched right after the user's newest items. Worked out
by hand on a tiny table, then in the service over the real small bundle against counts made
here from the bundle's own users.json, through re-upserts, deletes and a bundle built before
transitions were counted."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from offline.split import MIN_LENGTH_TO_EVALUATE
from services.retrieval.service import RetrievalService
from shared.bundle import Bundle
from shared.contracts import ItemUpsert, RetrievalQuery, sources_only
from shared.recency import recency_weights
from shared.transitions import COOC_ITEMS, COOC_WINDOW, TRANSITIONS_FILE, Transitions, best_first
from tests.retrieval.conftest import link_bundle


def test_after_weighs_the_newest_items_most() -> None:
    # users: 0 1 2 | 1 3 | 0 3
    t = Transitions.from_sequences([np.array([0, 1, 2]), np.array([1, 3]),
                                    np.array([0, 3])], 5)
    rows, scores = t.after(np.array([0, 1]))  # 1 is the newest (weight 1), 0 weighs 0.8
    got = dict(zip(rows.tolist(), scores.tolist(), strict=True))
    # after 0: 1, 2, 3 once each; after 1: 2 once, 3 once
    assert got == pytest.approx({1: 0.8, 2: 1.8, 3: 1.8})
    # an item the table does not hold (-1: upserted since the build) follows nothing
    assert t.after(np.array([-1])) == (pytest.approx([]), pytest.approx([]))
    rows, scores = t.after(np.array([-1, 1]))
    assert rows.tolist() == [2, 3] and scores.tolist() == [1, 1]


def test_best_first_breaks_ties_by_popularity_then_row() -> None:
    rows = np.array([7, 3, 5, 9, 1])
    scores = np.array([1.0, 2.0, 1.0, 1.0, 0.5], np.float32)
    popularity = np.zeros(10, np.float32)
    popularity[[5, 9]] = [4, 4]
    top = best_first(rows, scores, 3, popularity)
    assert rows[top].tolist() == [3, 5, 9]  # 2.0; then 5 and 9 (as popular) before 7
    assert rows[best_first(rows, scores, 10, popularity)].tolist() == [3, 5, 9, 7, 1]


def expected_cooc(bundle: Bundle, history: list[str], cap: int) -> list[str]:
    """The cooc source's answer worked out from users.json: every user's sequence as the
    build served it (the test item held out), pairs within COOC_WINDOW steps."""
    counts: Counter[tuple[str, str]] = Counter()
    for seq in bundle.users().values():
        served = seq[:-1] if len(seq) >= MIN_LENGTH_TO_EVALUATE else seq
        for i, a in enumerate(served):
            for b in served[i + 1:i + 1 + COOC_WINDOW]:
                if a != b:
                    counts[a, b] += 1
    newest = history[-COOC_ITEMS:]
    score: Counter[str] = Counter()
    for a, w in zip(newest, recency_weights(len(newest)).tolist(), strict=True):
        for (x, b), c in counts.items():
            if x == a:
                score[b] += w * c
    popularity = {it["item_id"]: it["popularity"] for it in bundle.items}
    row_of = bundle.row_of
    ranked = sorted((b for b in score if b not in history),
                    key=lambda b: (-round(score[b], 4), -popularity[b], row_of[b]))
    return ranked[:cap]


def a_history_with_followers(bundle: Bundle) -> list[str]:
    seqs = sorted(bundle.users().items())
    return next(s[-12:-2] for _, s in seqs if len(s) > 30)


def test_the_service_proposes_what_followed_the_newest_items(settings) -> None:
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    history = a_history_with_followers(bundle)
    want = expected_cooc(bundle, history, 25)
    assert len(want) == 25, "the small bundle's users should give this history followers"

    async def go():
        service = await RetrievalService.open(settings)
        (result,) = await service.retrieve([RetrievalQuery(history=history,
                                                           caps=sources_only(cooc=25))])
        return result

    result = asyncio.run(go())
    assert [c.source for c in result.candidates] == ["cooc"] * 25
    assert [c.item_id for c in result.candidates] == want
    assert result.per_source["cooc"] == 25


def test_a_replaced_item_is_proposed_again_and_a_deleted_one_never(settings) -> None:
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    history = a_history_with_followers(bundle)
    first, second = expected_cooc(bundle, history, 2)
    query = RetrievalQuery(history=history, caps=sources_only(cooc=25))

    async def go():
        service = await RetrievalService.open(settings)
        item = bundle.items[bundle.row_of[first]]
        await service.upsert_item(first, ItemUpsert(title=item["title"] + " (re-cut)",
                                                    tags=item["tags"]))
        await service.delete_item(second)
        (result,) = await service.retrieve([query])
        return result, service.state.row_of[first]

    result, new_row = asyncio.run(go())
    ids = [c.item_id for c in result.candidates]
    assert new_row != bundle.row_of[first]  # served under its new row, still proposed
    assert ids[0] == first and second not in ids


def test_a_bundle_without_transitions_serves_without_the_cooc_source(
        settings, small_bundle: Path) -> None:
    old = settings.artifacts_dir / "no-transitions"
    link_bundle(small_bundle, settings.artifacts_dir, "no-transitions")
    (old / TRANSITIONS_FILE).unlink()
    history = a_history_with_followers(Bundle(small_bundle))

    async def go():
        service = await RetrievalService.open(settings.model_copy(
            update={"bundle": "no-transitions"}))
        (result,) = await service.retrieve([RetrievalQuery(history=history)])
        return result, service.state.notes

    try:
        result, notes = asyncio.run(go())
    finally:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    assert result.per_source["cooc"] == 0 and result.per_source["ann"] > 0
    assert any(TRANSITIONS_FILE in n and "rebuilt" in n for n in notes)
