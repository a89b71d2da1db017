"""FAISS indexes: chosen by catalog size, moved to a GPU when faiss sees one, recall measured.

All indexes are inner-product over float32 rows whose FAISS ids are the bundle's row numbers (and
rows added while serving get new ids). Flat and HNSW indexes are wrapped in an IndexIDMap2 for
that; IVF indexes store the ids in their inverted lists themselves and are never wrapped: an
IndexIDMap2 renumbers its id map when rows are removed but the IVF lists keep the old positions,
so after one removal every later row came back as its neighbour's id (`load` unwraps bundles
written that way).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import faiss
import numpy as np

EXACT_MAX_ITEMS = 200_000  # exact search over <=200k x 64 floats is a few ms; ANN above
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
# Above EXACT_MAX_ITEMS both indexes are IVF (8-bit scalar-quantised rows where SIMD decodes
# them, IVF-SQ8; see auto_kind), not HNSW. Measured by bench/scale.py on the 2-core machine at
# 100k x 65: HNSW took 241 s to build (one thread, busy machine) and 540 bytes per item,
# IVF-SQ8 1.3 s and 82 bytes, at recall@100 0.96 against 0.93; at 1M x 384 HNSW would also
# hold 1.5 GB of float vectors plus 256 MB of links. IVF can also remove rows (HNSW cannot).
# HNSW stays available as kind="hnsw".
IVF_TRAIN_PER_LIST = 64  # k-means training rows per inverted list (FAISS warns below 39)
IVF_NPROBE_SHARE = 1 / 32  # lists searched per query, as a share of nlist (at least 16)
KINDS = ("auto", "flat", "hnsw", "ivf_sq8", "ivf_flat", "ivf_pq")
FLOAT16_DIM_MULTIPLE = 8  # float16_rows: FAISS's SIMD decoders read 8 dims at a time
FLOAT16_COPY_ROWS = 65_536


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def auto_kind(n: int, dim: int) -> str:
    """Exact up to EXACT_MAX_ITEMS rows; above, IVF-SQ8 where FAISS decodes 8-bit codes with
    SIMD (dims a multiple of 8, e.g. the 384-dim content) and IVF-Flat otherwise (the 65-dim
    learned vectors: at 1M x 65, k=150, nprobe 31, one thread, 4.19 ms a query for IVF-SQ8
    against 1.17 ms for IVF-Flat, recall 0.353 against 0.349; 260 instead of 65 bytes a row)."""
    if n <= EXACT_MAX_ITEMS:
        return "flat"
    return "ivf_sq8" if dim % FLOAT16_DIM_MULTIPLE == 0 else "ivf_flat"


def ivf_lists(n: int) -> int:
    """About sqrt(n) inverted lists (1,000 at 1M rows), at least 1."""
    return max(1, int(round(np.sqrt(n))))


def build_index(vectors: np.ndarray, ids: np.ndarray | None = None,
                kind: str = "auto", seed: int = 0) -> faiss.Index:
    """kind: 'auto' (auto_kind), 'flat', 'hnsw', 'ivf_sq8', 'ivf_flat' or 'ivf_pq' (IVF with a
    product quantiser of about dim/8 one-byte codes; measured in bench/scale.py, not chosen by
    auto)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = auto_kind(n, dim)
    inner: faiss.Index
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        inner = hnsw
    elif kind in ("ivf_sq8", "ivf_flat", "ivf_pq"):
        inner = _trained_ivf(vectors, kind, seed)
    else:
        raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    ids = np.arange(n, dtype=np.int64) if ids is None else ids
    if isinstance(inner, faiss.IndexIVF):  # holds its own ids (see the module's docstring)
        inner.add_with_ids(vectors, ids)
        return inner
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, ids)
    return index


def _trained_ivf(vectors: np.ndarray, kind: str, seed: int) -> faiss.Index:
    n, dim = vectors.shape
    nlist = ivf_lists(n)
    quantizer = faiss.IndexFlatIP(dim)
    inner: faiss.IndexIVF
    if kind == "ivf_sq8":
        inner = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf_flat":
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        inner = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_codes(dim), 8,
                                 faiss.METRIC_INNER_PRODUCT)
    sample = vectors
    if n > nlist * IVF_TRAIN_PER_LIST:
        rows = np.random.default_rng(seed).choice(n, nlist * IVF_TRAIN_PER_LIST, replace=False)
        sample = vectors[np.sort(rows)]
    inner.train(sample)
    inner.own_fields = True
    # the IVF index owns (and frees) its coarse quantiser now; SWIG's `this` handle is not in
    # faiss's type stubs
    quantizer.this.disown()  # type: ignore[attr-defined]
    set_nprobe(inner)
    return inner


def pq_codes(dim: int) -> int:
    """One-byte codes per vector for ivf_pq: the smallest divisor of dim of at least dim/8
    (384 -> 48, 65 -> 13), so each code covers at most 8 dimensions."""
    divisors = [m for m in range(4, dim + 1) if dim % m == 0 and m <= dim // 2]
    if not divisors:
        raise ValueError(f"ivf_pq needs a dimension with a divisor between 4 and dim/2, "
                         f"not {dim}")
    wide_enough = [m for m in divisors if m >= dim / 8]
    return min(wide_enough) if wide_enough else max(divisors)


def set_nprobe(index: faiss.Index) -> None:
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = max(16, int(inner.nlist * IVF_NPROBE_SHARE))


def _inner(index: faiss.Index) -> faiss.Index:
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.downcast_index(index.index)
    return faiss.downcast_index(index)


def float16_rows(index: faiss.Index) -> faiss.Index:
    """A flat inner-product index over float32 rows, served from float16 rows instead when
    FAISS can decode them with SIMD (dims a multiple of 8); any other index is returned as it
    is (a GPU index too). An exact search is bound by reading the rows: on MicroLens-50k's
    content (19,220 x 384) one query took 0.32 ms instead of 0.86 ms, top-100 unchanged on 300
    queries (recall 1.000). At 65 dims FAISS has no SIMD path for it: 1.88 ms against 0.23."""
    inner = _inner(index)
    if type(inner) is not faiss.IndexFlatIP or inner.d % FLOAT16_DIM_MULTIPLE:
        return index
    n = inner.ntotal
    ids = (faiss.vector_to_array(index.id_map) if isinstance(index, faiss.IndexIDMap2)
           else np.arange(n, dtype=np.int64))
    half = faiss.IndexScalarQuantizer(inner.d, faiss.ScalarQuantizer.QT_fp16,
                                      faiss.METRIC_INNER_PRODUCT)
    out = faiss.IndexIDMap2(half)
    for start in range(0, n, FLOAT16_COPY_ROWS):  # bounded: never a second full float32 copy
        stop = min(n, start + FLOAT16_COPY_ROWS)
        out.add_with_ids(inner.reconstruct_n(start, stop - start), ids[start:stop])
    return out


def index_kind(index: faiss.Index) -> str:
    inner = _inner(index)
    if isinstance(inner, faiss.IndexScalarQuantizer):
        return "flat_fp16"
    if isinstance(inner, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        return "ivf_sq8"
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf_flat"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivf_pq"
    return "flat"


def to_gpu_if_available(index: faiss.Index, use_gpu: bool = True) -> tuple[faiss.Index, str]:
    """Return (index, device) where device is 'gpu' or 'cpu'. HNSW has no GPU form: stays CPU."""
    if not use_gpu or gpu_count() == 0 or index_kind(index) != "flat":
        return index, "cpu"
    res = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
    # the resources must outlive the index: a plain Python attribute on the SWIG object, which
    # faiss's type stubs do not declare
    gpu_index.referenced_objects = [res]  # type: ignore[attr-defined]
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
    index = _unwrap_ivf(faiss.read_index(str(path)), path)
    set_nprobe(index)
    return index


def _unwrap_ivf(index: faiss.Index, path: Path) -> faiss.Index:
    """An IVF index inside an IndexIDMap2 (bundles built before the IVF held its own ids) as the
    bare IVF index, copied once at load. Its lists hold positions 0..n-1, which are the row ids
    only when the id map is the identity: true of every bundle the build wrote."""
    if not isinstance(index, faiss.IndexIDMap2):
        return index
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexIVF):
        return index
    if not np.array_equal(faiss.vector_to_array(index.id_map),
                          np.arange(index.ntotal, dtype=np.int64)):
        raise ValueError(f"{path}: an IVF index under an id map that is not 0..n-1; rebuild "
                         "the bundle (vidrec build) to store the ids in the IVF lists")
    # a copy that Python owns; the wrapper frees the original (handing the inner index over
    # instead left SWIG without a destructor for the wrapper: the next load got a bare proxy)
    return faiss.clone_index(inner)


def reconstructable(index: faiss.Index) -> bool:
    """Whether `rows` can read vectors back from this CPU IVF index (after `enable_rows`)."""
    return isinstance(_inner(index), faiss.IndexIVF) and not isinstance(index, faiss.IndexIDMap2)


def enable_rows(index: faiss.Index) -> None:
    """Let an IVF index answer `rows`: a hash map from id to list position (about 40 bytes per
    row; a hash map, not an array, because ids are added out of order and removed)."""
    ivf = cast(faiss.IndexIVF, faiss.downcast_index(index))
    hashtable = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # not in faiss's stubs
    if ivf.direct_map.type != hashtable:
        ivf.set_direct_map_type(hashtable)


def rows(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The vectors of `ids` decoded from the index's own codes (float32 [len(ids), d]): for an
    IVF-SQ8 index they are within half a quantisation step of what was added (<= 0.003 per
    dimension on unit-length content rows)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if not len(ids):
        return np.empty((0, index.d), np.float32)
    return index.reconstruct_batch(ids)
