"""FAISS indexes: chosen by catalog size, moved to a GPU when faiss sees one, recall measured.

All indexes are inner-product over float32 rows, wrapped in an IndexIDMap2 so FAISS ids are
the bundle's row numbers (and rows added while serving get new ids).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

EXACT_MAX_ITEMS = 200_000  # exact search over <=200k x 64 floats is a few ms; HNSW above
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def build_index(vectors: np.ndarray, ids: np.ndarray | None = None,
                kind: str = "auto") -> faiss.Index:
    """kind: 'auto' (exact up to EXACT_MAX_ITEMS rows, else HNSW), 'flat' or 'hnsw'."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_ITEMS else "hnsw"
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"unknown index kind {kind!r}; use auto, flat or hnsw")
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, np.arange(n, dtype=np.int64) if ids is None else ids)
    return index


def index_kind(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return "hnsw" if isinstance(inner, faiss.IndexHNSWFlat) else "flat"


def to_gpu_if_available(index: faiss.Index, use_gpu: bool = True) -> tuple[faiss.Index, str]:
    """Return (index, device) where device is 'gpu' or 'cpu'. HNSW has no GPU form: stays CPU."""
    if not use_gpu or gpu_count() == 0 or index_kind(index) != "flat":
        return index, "cpu"
    res = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
    gpu_index.referenced_objects = [res]  # the resources must outlive the index
    return gpu_index, "gpu"


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(queries, k)


def recall_against_exact(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray,
                         k: int) -> float:
    """Share of the exact top-k (brute force over `vectors`) that `index` also returns."""
    exact = build_index(vectors, kind="flat")
    _, truth = search(exact, queries, k)
    _, got = search(index, queries, k)
    hits = sum(len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def save(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))
