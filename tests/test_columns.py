"""The compact per-row columns (shared/columns.py: retrieval state, gateway catalog) and the
streamed items.json they are filled from (Bundle.iter_items)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.retrieval.state import _tag_index
from shared.bundle import Bundle, BundleError
from shared.columns import GrowableRows, TagColumn, TextColumn


def test_text_column_round_trips_unicode_and_appends() -> None:
    texts = ["", "plain", "émoji 🎬 and 中文", "x" * 1000]
    col = TextColumn(texts)
    assert len(col) == 4 and list(col) == texts and col[-1] == texts[-1]
    assert col.append("new one") == 4 and col[4] == "new one" and col[2] == texts[2]
    assert col.nbytes == sum(len(t.encode()) for t in [*texts, "new one"]) + 8 * 5
    with pytest.raises(IndexError):
        col[5]


def test_tag_column_stores_each_name_once() -> None:
    rows = [("a", "b"), (), ("b",), ("c", "a", "c")]
    col = TagColumn(rows)
    assert list(col) == rows and col.names == ["a", "b", "c"]
    assert col.append(["d", "a"]) == 4 and col[4] == ("d", "a") and col[0] == ("a", "b")
    codes, ends = col.codes_and_ends()
    assert codes.tolist() == [0, 1, 1, 2, 0, 2, 3, 0] and ends.tolist() == [2, 2, 3, 6, 8]
    col.append(["e"])  # the copies above do not pin the buffers
    assert col[5] == ("e",) and col[-1] == ("e",) and col[-2] == ("d", "a")
    assert col[5] is col[5]  # built once, then reused


def test_tag_index_lists_rows_most_popular_first() -> None:
    col = TagColumn([("a", "b"), ("b",), ("a",), (), ("a", "b")])
    popularity = np.array([1.0, 5.0, 3.0, 9.0, 3.0], np.float32)
    popular_rows = np.argsort(-popularity, kind="stable")  # 3, 1, 2, 4, 0
    index = _tag_index(col, popular_rows)
    assert {k: v.tolist() for k, v in index.items()} == {"a": [2, 4, 0], "b": [1, 4, 0]}
    assert _tag_index(TagColumn([(), ()]), np.array([0, 1])) == {}


def _bundle_with(tmp_path: Path, text: str) -> Bundle:
    (tmp_path / "items.json").write_text(text)
    return Bundle(tmp_path)


@pytest.mark.parametrize("text", ["[]", " [ ] ", json.dumps([{"item_id": "1"}]),
                                  json.dumps([{"item_id": "1"}, {"item_id": "2", "t": [1]}],
                                             indent=2)])
def test_iter_items_reads_what_json_loads_reads(tmp_path: Path, text: str) -> None:
    assert list(_bundle_with(tmp_path, text).iter_items()) == json.loads(text)


@pytest.mark.parametrize(("text", "message"), [
    ('{"item_id": "1"}', "expected a JSON array"),
    ('[{"item_id": "1"} {"item_id": "2"}]', "expected ',' or ']'"),
    ('[{"item_id": "1"}, 3]', "is not an object"),
    ('[{"item_id": "1"', "items.json"),
])
def test_iter_items_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        list(_bundle_with(tmp_path, text).iter_items())


def test_growable_rows_extend_and_append_keep_order() -> None:
    rows = GrowableRows(np.zeros((0, 2), np.float32), spare=3, dtype=np.float16)
    rows.extend(np.arange(8, dtype=np.float32).reshape(4, 2))  # grows past its spare room
    assert rows.append([8, 9]) == 4 and rows.view.dtype == np.float16
    assert rows.view.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert rows.take([4, 0]).tolist() == [[8, 9], [0, 1]]


def test_item_columns_read_a_bundle_in_file_order(tmp_path: Path) -> None:
    from shared.columns import ItemColumns
    from shared.tags import TagClusters

    items = [{"item_id": 7, "title": "é one", "tags": ["a", "b"], "popularity": 3},
             {"item_id": "x", "tags": []}]
    cols = ItemColumns.read(_bundle_with(tmp_path, json.dumps(items)), TagClusters.identity())
    assert cols.item_ids == ["7", "x"] and list(cols.titles) == ["é one", ""]
    assert list(cols.tags) == [("a", "b"), ()] and cols.clusters is cols.tags
    assert cols.popularity.tolist() == [3.0, 0.0]


def test_iterating_a_tag_column_does_not_fill_its_cache() -> None:
    col = TagColumn([("a",), ("b", "c")])
    assert list(col) == [("a",), ("b", "c")] and not col._built
