"""Packing item-id lists into the ranker's input arrays (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from services.ranking.batch import ItemTable, pack, plan_batches

E = 4


@pytest.fixture
def table() -> ItemTable:
    content = np.arange(5 * E, dtype=np.float32).reshape(5, E) + 1  # no zero rows
    return ItemTable(["a", "b", "c", "d", "e"], content)


def test_model_index_is_row_plus_two_and_unknown_is_one(table: ItemTable) -> None:
    x = pack(table, [["a"]], [["c", "zzz", "a"]], max_history=3)
    assert x.cand_ids.tolist() == [[4, 1, 2]]
    assert np.array_equal(x.cand_content[0, 0], table.content[2])
    assert not x.cand_content[0, 1].any()  # unknown without content: zero row
    assert np.array_equal(x.cand_content[0, 2], table.content[0])
    assert x.cand_ids.dtype == np.int64 and x.cand_content.dtype == np.float32


def test_histories_are_left_padded_newest_last_and_truncated(table: ItemTable) -> None:
    x = pack(table, [["a", "b", "c", "d"], ["e"]], [["a"], ["a"]], max_history=3)
    # user 0 keeps its newest 3; user 1 is left-padded to the batch's longest history
    assert x.hist_ids.tolist() == [[3, 4, 5], [0, 0, 6]]
    assert np.array_equal(x.hist_content[0, 2], table.content[3])
    assert not x.hist_content[1, :2].any()


def test_unknown_history_items_without_content_are_dropped(table: ItemTable) -> None:
    x = pack(table, [["a", "new1", "b", "new2"]], [["a"]], max_history=5)
    assert x.hist_ids.tolist() == [[2, 3]]
    vec = np.full(E, 0.5, dtype=np.float32)
    x = pack(table, [["a", "new1", "b", "new2"]], [["new2", "a"]], max_history=5,
             new_content={"new2": vec})
    assert x.hist_ids.tolist() == [[2, 3, 1]]
    assert np.array_equal(x.hist_content[0, 2], vec)
    assert x.cand_ids.tolist() == [[1, 2]]
    assert np.array_equal(x.cand_content[0, 0], vec)


def test_ragged_candidates_are_right_padded(table: ItemTable) -> None:
    x = pack(table, [[], ["a"], ["b"]], [["a", "b", "c"], [], ["d"]], max_history=2)
    assert x.cand_ids.tolist() == [[2, 3, 4], [0, 0, 0], [5, 0, 0]]
    assert not x.cand_content[1].any() and not x.cand_content[2, 1:].any()
    # an empty history is all padding, max_history wide whatever the rest of the batch
    assert x.hist_ids.tolist() == [[0, 0], [0, 2], [0, 3]]
    x = pack(table, [["a"], ["b"]], [["a"], ["b"]], max_history=2)
    assert x.hist_ids.tolist() == [[2], [3]]


def test_new_content_lands_on_every_occurrence(table: ItemTable) -> None:
    vec = np.full(E, 7.0, dtype=np.float32)
    x = pack(table, [["a"], ["a"]], [["n", "a"], ["b", "n", "n"]], max_history=1,
             new_content={"n": vec})
    assert x.cand_ids.tolist() == [[1, 2, 0], [3, 1, 1]]
    for u, c in [(0, 0), (1, 1), (1, 2)]:
        assert np.array_equal(x.cand_content[u, c], vec)
    assert not x.cand_content[0, 2].any()


def test_fixed_history_width(table: ItemTable) -> None:
    x = pack(table, [["a"]], [["a"]], max_history=4, history_width=4)
    assert x.hist_ids.tolist() == [[0, 0, 0, 2]]


def test_table_rejects_content_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="one row per item"):
        ItemTable(["a", "b"], np.zeros((3, E), dtype=np.float32))


def test_plan_batches_caps_padded_cells_and_skips_empty_lists() -> None:
    lengths = [3, 0, 10, 2, 10, 1]
    batches = plan_batches(lengths, max_cells=20)
    assert sorted(u for b in batches for u in b) == [0, 2, 3, 4, 5]
    for b in batches:
        assert len(b) * max(lengths[u] for u in b) <= 20 or len(b) == 1
    assert plan_batches(lengths, max_cells=10_000) == [[2, 4, 0, 3, 5]]


def test_new_content_in_equal_length_lists(table: ItemTable) -> None:
    vec = np.full(E, 3.0, dtype=np.float32)
    x = pack(table, [["a"], ["b"]], [["a", "n"], ["n", "zz"]], max_history=1,
             new_content={"n": vec})
    assert x.cand_ids.tolist() == [[2, 1], [1, 1]]
    assert np.array_equal(x.cand_content[0, 1], vec) and np.array_equal(x.cand_content[1, 0], vec)
    assert not x.cand_content[1, 1].any()
