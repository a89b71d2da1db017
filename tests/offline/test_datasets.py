"""Loaders on the real files, the custom format, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data import DatasetError, load_dataset
from shared.data.types import hashtags


def test_microlens_counts(data_dir: Path) -> None:
    ds = load_dataset("microlens-50k", data_dir)
    assert len(ds.sequences) == 50_000
    assert ds.num_interactions == 359_708
    assert len(ds.items) == 19_220
    lengths = [len(s) for s in ds.sequences.values()]
    assert min(lengths) == 5 and max(lengths) == 218
    # CRLF stripped: no id carries a carriage return
    assert not any("\r" in i for s in list(ds.sequences.values())[:1000] for i in s)
    assert ds.sequences["1"] == ["1958", "6346", "15223", "17700", "1707"]
    first = ds.items[0]
    assert first.item_id == "1" and first.tags == ("comic", "two yuan", "my destiny villain")


def test_movielens_counts_and_order(data_dir: Path) -> None:
    ds = load_dataset("ml-latest-small", data_dir)
    assert len(ds.sequences) == 610
    assert ds.num_interactions == 100_836
    assert len(ds.items) == 9_742
    for user, ts in ds.timestamps.items():
        assert ts == sorted(ts), user
    toy_story = ds.items[0]
    assert toy_story.title == "Toy Story (1995)"
    assert {"adventure", "animation", "pixar"} <= set(toy_story.tags)  # genres + user tags


def test_hashtags() -> None:
    assert hashtags("dance # Funny  Cat #funny cat # ") == ("funny cat",)
    assert hashtags("no tags here") == ()


def _write_custom(folder: Path, interactions: str, items: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.csv").write_text(interactions)
    (folder / "items.csv").write_text(items)
    return folder


def test_custom_format_with_embeddings(tmp_path: Path) -> None:
    folder = _write_custom(
        tmp_path / "mine",
        "user_id,item_id,timestamp\nu1,b,2024-01-02T00:00:00Z\nu1,a,1704067200\nu2,a,5\n",
        "item_id,title,tags\na,First video,Cats|Funny\nb,Second,\n")
    np.save(folder / "embeddings.npy", np.eye(2, 3, dtype=np.float32))
    ds = load_dataset(str(folder), tmp_path)
    assert ds.sequences["u1"] == ["a", "b"]  # sorted by time across both timestamp forms
    assert ds.items[0].tags == ("cats", "funny")
    assert ds.embeddings.shape == (2, 3)


@pytest.mark.parametrize("interactions, items, problem", [
    ("user_id,item_id\nu1,a\n", "item_id,title,tags\na,A,\n", "missing column(s) timestamp"),
    ("user_id,item_id,timestamp\nu1,zz,1\n", "item_id,title,tags\na,A,\n", "line 2: item 'zz'"),
    ("user_id,item_id,timestamp\nu1,a,yesterday\n", "item_id,title,tags\na,A,\n",
     "neither unix seconds nor ISO 8601"),
    ("user_id,item_id,timestamp\n", "item_id,title,tags\na,A,\n", "no interactions"),
])
def test_custom_format_errors_name_file_and_problem(tmp_path: Path, interactions: str,
                                                     items: str, problem: str) -> None:
    folder = _write_custom(tmp_path / "bad", interactions, items)
    with pytest.raises(DatasetError) as err:
        load_dataset(str(folder), tmp_path)
    assert problem in str(err.value)
    assert str(folder) in str(err.value)


def test_missing_dataset_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="MicroLens-50k_titles.csv: file not found"):
        load_dataset("microlens-50k", tmp_path)


def test_malformed_microlens_line(tmp_path: Path) -> None:
    folder = tmp_path / "microlens-50k"
    folder.mkdir()
    (folder / "MicroLens-50k_titles.csv").write_text('item,title\n1,"a # b"\n')
    (folder / "MicroLens-50k_pairs.tsv").write_text("1\t1\r\n2 1\r\n")
    with pytest.raises(DatasetError, match="pairs.tsv: line 2: expected"):
        load_dataset("microlens-50k", tmp_path)


def test_published_checksums_match_the_real_files(data_dir: Path) -> None:
    """`vidrec data download` verifies against these; the copies here must agree."""
    from shared.data.download import SOURCES, ChecksumError, verify

    for source in SOURCES.values():
        verify(data_dir / source.folder, source)
    with pytest.raises(ChecksumError, match="does not match"):
        verify(data_dir / "ml-latest-small", SOURCES["ml-latest-small"].__class__(
            url="", folder="ml-latest-small", files={"movies.csv": "0" * 64}))
