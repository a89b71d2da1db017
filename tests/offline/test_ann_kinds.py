"""shared/ann.py's index kinds for large catalogues: what `auto` picks, recall against exact
search, save/load keeping the search depth, and which kinds can remove rows."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from shared import ann


@pytest.fixture(autouse=True)
def one_thread():
    # OpenMP teams spin-wait for each other: on a shared 2-core machine one thread is faster
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 50, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_auto_is_exact_small_ivf_sq8_large() -> None:
    assert ann.auto_kind(ann.EXACT_MAX_ITEMS, 384) == "flat"
    assert ann.auto_kind(ann.EXACT_MAX_ITEMS + 1, 65) == "ivf_flat"  # no SIMD for SQ8 at 65
    assert ann.auto_kind(ann.EXACT_MAX_ITEMS + 1, 384) == "ivf_sq8"
    assert ann.ivf_lists(1_000_000) == 1000


@pytest.mark.parametrize(("kind", "dim", "min_recall"),
                         [("ivf_sq8", 64, 0.9), ("ivf_flat", 65, 0.9), ("ivf_pq", 64, 0.4),
                          ("hnsw", 64, 0.9)])
def test_compressed_kinds_recall_and_survive_save_load(kind: str, dim: int, min_recall: float,
                                                        tmp_path: Path) -> None:
    x = clustered(4000, dim)
    queries = x[:100] + 0.05
    index = ann.build_index(x, kind=kind)
    assert ann.index_kind(index) == kind and index.ntotal == len(x)
    assert ann.recall_against_exact(index, x, queries, 50) >= min_recall
    ann.save(index, tmp_path / "i.faiss")
    loaded = ann.load(tmp_path / "i.faiss")
    assert ann.index_kind(loaded) == kind
    if kind.startswith("ivf"):
        inner = faiss.downcast_index(loaded)
        assert inner.nprobe == max(16, int(inner.nlist * ann.IVF_NPROBE_SHARE))
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_ivf_removes_rows_hnsw_cannot() -> None:
    x = clustered(2000, 64)
    ivf = ann.build_index(x, kind="ivf_sq8")
    assert ivf.remove_ids(np.array([0, 1], np.int64)) == 2
    assert not {0, 1} & set(ivf.search(x[:2], 20)[1].ravel().tolist())
    with pytest.raises(RuntimeError):
        ann.build_index(x, kind="hnsw").remove_ids(np.array([0], np.int64))


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8", "ivf_flat", "ivf_pq"])
def test_after_a_removal_every_other_row_keeps_its_id(kind: str) -> None:
    """IndexIDMap2 over IVF renumbered its id map on removal while the IVF lists kept the old
    positions: every row after the removed one came back as its neighbour's id."""
    x = clustered(3000, 64)
    index = ann.build_index(x, kind=kind)
    if kind != "flat":
        faiss.downcast_index(index).nprobe = faiss.downcast_index(index).nlist  # exhaustive
    probe = np.arange(100, 3000, 97)
    before = index.search(x[probe], 1)[1][:, 0]
    assert index.remove_ids(np.array([3, 50], np.int64)) == 2
    np.testing.assert_array_equal(index.search(x[probe], 1)[1][:, 0], before)
    index.add_with_ids(x[7:8], np.array([5000], np.int64))  # an upsert's new row
    assert set(index.search(x[7:8], 2)[1][0].tolist()) == {7, 5000}


def test_an_ivf_index_saved_under_an_id_map_loads_bare_and_removes_correctly(
        tmp_path: Path) -> None:
    x = clustered(3000, 64)
    inner = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(64), 64, 8,
                                          faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    inner.train(x)
    legacy = faiss.IndexIDMap2(inner)
    legacy.add_with_ids(x, np.arange(3000, dtype=np.int64))  # as bundles were written before
    faiss.write_index(legacy, str(tmp_path / "legacy.faiss"))
    loaded = ann.load(tmp_path / "legacy.faiss")
    assert not isinstance(loaded, faiss.IndexIDMap2) and ann.index_kind(loaded) == "ivf_sq8"
    assert ann.reconstructable(loaded) and not ann.reconstructable(ann.build_index(x, kind="flat"))
    faiss.downcast_index(loaded).nprobe = 8
    assert loaded.remove_ids(np.array([3], np.int64)) == 1
    assert loaded.search(x[2000:2001], 1)[1][0, 0] == 2000
    ann.enable_rows(loaded)
    decoded = ann.rows(loaded, np.array([2000, 10]))
    assert np.abs(decoded - x[[2000, 10]]).max() < 0.01  # 8-bit codes
    assert ann.rows(loaded, np.array([], np.int64)).shape == (0, 64)


def test_an_ivf_index_under_a_shuffled_id_map_is_refused(tmp_path: Path) -> None:
    x = clustered(1000, 16)
    inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 4, faiss.METRIC_INNER_PRODUCT)
    inner.train(x)
    wrapped = faiss.IndexIDMap2(inner)
    wrapped.add_with_ids(x, np.arange(1000, dtype=np.int64)[::-1].copy())
    faiss.write_index(wrapped, str(tmp_path / "odd.faiss"))
    with pytest.raises(ValueError, match="rebuild the bundle"):
        ann.load(tmp_path / "odd.faiss")


def test_unknown_kind_and_pq_dimension_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        ann.build_index(clustered(100, 8), kind="lsh")
    assert ann.pq_codes(384) == 48 and ann.pq_codes(65) == 13
    with pytest.raises(ValueError, match="divisor"):
        ann.build_index(clustered(500, 67), kind="ivf_pq")


def test_a_flat_index_is_served_from_float16_rows_with_its_ids() -> None:
    x = clustered(3000, 64)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5  # FAISS ids that are not row numbers
    flat = ann.build_index(x, ids, kind="flat")
    half = ann.float16_rows(flat)
    assert ann.index_kind(half) == "flat_fp16" and half.ntotal == 3000
    queries = x[:50] + 0.05 * np.random.default_rng(1).standard_normal((50, 64)).astype(
        np.float32)
    exact_scores, exact_ids = ann.search(flat, queries, 100)
    scores, got = ann.search(half, queries, 100)
    overlap = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, exact_ids, strict=True)])
    assert overlap >= 0.99
    assert np.abs(scores - exact_scores).max() < 1e-2  # float16 rows: scores to ~3 digits
    # upserts and removals keep working on it (retrieval's writes)
    half.add_with_ids(x[:1] * 1.0, np.array([10**9], dtype=np.int64))
    assert ann.search(half, x[:1], 1)[1][0, 0] in (10**9, 5)
    assert half.remove_ids(np.array([10**9, 5], dtype=np.int64)) == 2
    assert 5 not in ann.search(half, x[:1], 10)[1][0]


def test_float16_rows_leaves_other_indexes_alone() -> None:
    odd = ann.build_index(clustered(500, 65), kind="flat")  # no SIMD path: slower, kept
    assert ann.float16_rows(odd) is odd
    ivf = ann.build_index(clustered(3000, 64), kind="ivf_sq8")
    assert ann.float16_rows(ivf) is ivf
