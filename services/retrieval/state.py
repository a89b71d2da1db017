"""Everything retrieval holds for one bundle: per-row arrays, FAISS indexes, ONNX sessions, the
tag clusters with their inverted index (cluster -> rows) and the popularity order.

Row r of the arrays is FAISS id r in both indexes. Bundle rows come first; an item upserted
while serving gets a new row at the end (the row it replaces is marked dead and, where the index
supports it, removed from FAISS). Rows are never reused, so a FAISS id always means one version
of one item. Arrays grow with spare capacity so an upsert does not copy the catalogue.

Mutations (`add_item`, `kill`) run on the event loop thread only, as do the reads of
`retrieve`, so a request never sees half an upsert; a reload builds a new RetrievalState in a
worker thread and swaps one reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, DTypeLike

from shared import ann
from shared.bundle import FIRST_ITEM_INDEX, UNKNOWN_INDEX, Bundle, BundleError, files_bytes
from shared.columns import GrowableRows, ItemColumns, TagColumn, TextColumn
from shared.onnx_graphs import ITEM_ENCODER, QUERY_ENCODER, TEXT_ENCODER, Graph, GraphMismatch
from shared.onnx_session import SessionLoadError, device_of, make_session
from shared.settings import Settings
from shared.tags import TagClusters
from shared.text_encoder import OnnxTextEncoder
from shared.transitions import TRANSITIONS_FILE, Transitions

log = logging.getLogger(__name__)
GPU_MAX_K = 2048  # faiss GPU indexes answer at most this many neighbours
# Above this many items the content rows and the learned-vector copy are held as float16 (half
# the memory: 1M x 384 content is 768 MB instead of 1.5 GB; bench/scale.py). Content rows only
# feed the query encoder and the content query, where float16's 3 significant digits change no
# ranking that matters, and FAISS searches its own float32 copy of the learned vectors; small
# catalogues keep float32 so their results stay bit-identical to the offline evaluation.
CONTENT_FLOAT16_ABOVE = ann.EXACT_MAX_ITEMS


class IndexRows:
    """The content rows of a large catalogue, decoded from the CPU IVF index's own codes
    instead of held a second time: at 1M x 384 that is 768 MB of float16 rows not kept
    (bench/scale.py), for reads of a few dozen rows per query (the history). IVF-SQ8 codes are
    within half a quantisation step of the rows (<= 0.003 per dimension, shared/ann.py).

    A row FAISS removes (a deleted or replaced item) is decoded first and kept here: a user's
    history still holds deleted items, and their content still says what the user watched."""

    def __init__(self, index: faiss.Index, n: int) -> None:
        ann.enable_rows(index)
        self.index = index
        self.n = n
        self.removed: dict[int, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def take(self, rows: np.ndarray | list[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if not self.removed:
            return ann.rows(self.index, rows)
        gone = np.array([r in self.removed for r in rows.tolist()], dtype=bool)
        out = np.empty((len(rows), self.dim), np.float32)
        out[~gone] = ann.rows(self.index, rows[~gone])
        for i in np.flatnonzero(gone).tolist():
            out[i] = self.removed[int(rows[i])]
        return out

    def append(self, row: ArrayLike) -> int:
        """Count a row whose vector the caller adds to the index itself (add_item)."""
        self.n += 1
        return self.n - 1

    def keep_before_removal(self, row: int) -> None:
        if row not in self.removed:
            self.removed[row] = ann.rows(self.index, np.array([row]))[0]


def encoder_session(bundle: Bundle, graph: Graph, settings: Settings,
                    fixed: dict[str, int]) -> ort.InferenceSession:
    """One of the bundle's encoders, checked against its spec (shared/onnx_graphs.py)."""
    path = bundle.file(graph.file)
    try:
        sess = make_session(path, settings)
        graph.check(sess, fixed)
    except (SessionLoadError, GraphMismatch) as exc:
        raise BundleError(f"{path}: {exc}") from exc
    return sess


@dataclass
class RetrievalState:
    bundle: Bundle
    n_bundle: int
    item_ids: list[str]
    titles: TextColumn
    tags: TagColumn
    clusters: TagColumn                 # per row: the clusters of its tags (shared/tags.py);
                                        # the `tags` column itself when the bundle has none
    row_of: dict[str, int]              # item id -> its current row (dead rows stay mapped)
    bundle_row_of: dict[str, int]       # item id -> its row in the bundle (fixed)
    model_index: GrowableRows           # int64: row + 2 for bundle items, 1 for new ones
    content: GrowableRows | IndexRows   # [rows, E], L2-normalised (IndexRows: large catalogues)
    vectors: GrowableRows | None        # [rows, D] learned item vectors; None when index_ann
                                        # holds the only copy (large catalogues: never read)
    unit: GrowableRows                  # unit-length taste part of vectors (nearest watched item)
    popularity: GrowableRows            # float32
    dead: GrowableRows                  # bool: deleted or replaced by a newer row
    tag_rows: dict[str, np.ndarray]     # cluster -> live rows carrying it, most popular first
    popular_rows: np.ndarray            # every live row, most popular first
    index_ann: faiss.Index
    index_content: faiss.Index
    index_kind: str
    faiss_device: str
    onnx_device: str
    query_encoder: ort.InferenceSession
    item_encoder: ort.InferenceSession | None  # None: loaded by the first upsert (see below)
    text_encoder: OnnxTextEncoder | None
    tag_clusters: TagClusters
    max_history: int
    transitions: Transitions | None     # what followed what (the cooc source); None: the
                                        # bundle predates them
    dead_in_index: int = 0              # dead rows FAISS could not remove: search deeper by this
    overlay_applied: int = 0
    # Rows added or killed so far: a read that paused for the event loop (retrieve.py
    # retrieve_steps) checks it did not change under it.
    changes: int = 0
    notes: list[str] = field(default_factory=list)
    item_encoder_loader: Callable[[], ort.InferenceSession] | None = None

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def n_rows(self) -> int:
        return self.dead.n

    @property
    def content_dim(self) -> int:
        content = self.content
        return content.dim if isinstance(content, IndexRows) else int(content.view.shape[1])

    @property
    def live_items(self) -> int:
        return int(self.n_rows - self.dead.view.sum())

    def memory_bytes(self) -> int:
        """Roughly what this bundle costs in memory: the arrays, plus index and model files."""
        arrays = sum(a._buf.nbytes for a in (self.model_index, self.content, self.vectors,
                                             self.unit, self.popularity, self.dead)
                     if isinstance(a, GrowableRows))
        files = files_bytes(self.bundle, ["index_ann.faiss", "index_content.faiss",
                                          "query_encoder.onnx", "item_encoder.onnx",
                                          "text_encoder.onnx", TRANSITIONS_FILE])
        return int(arrays + files)

    def max_k(self) -> int:
        k = int(self.index_ann.ntotal)
        return min(k, GPU_MAX_K) if self.faiss_device == "gpu" else k

    def bundle_model_index(self, item_id: str) -> int:
        """The model's own index for an item the bundle was trained on, else UNKNOWN_INDEX."""
        row = self.bundle_row_of.get(item_id)  # its bundle row, even after re-upserts
        return UNKNOWN_INDEX if row is None else row + FIRST_ITEM_INDEX

    # ---- mutations (event loop thread only) -------------------------------------------
    def learned_vectors(self, model_index: np.ndarray, content: np.ndarray) -> np.ndarray:
        if self.item_encoder is None and self.item_encoder_loader is not None:
            self.item_encoder = self.item_encoder_loader()
        if self.item_encoder is None:
            raise RuntimeError(f"bundle {self.version}: no item encoder to embed new items with")
        return ITEM_ENCODER.run(self.item_encoder, item_ids=model_index,
                                item_content=content)["item_vec"]

    def add_item(self, item_id: str, title: str, tags: list[str], content: np.ndarray,
                 vector: np.ndarray, model_index: int) -> int:
        """Append a row for a new version of `item_id`; the previous row (if any) dies. Tags
        the bundle does not know join their nearest cluster (the text encoder embeds them;
        upsert_item does that in a worker thread first, so here they are usually known)."""
        clusters = self.tag_clusters.assign(tags, self.text_encoder)
        self.changes += 1
        old = self.row_of.get(item_id)
        popularity = float(self.popularity.view[old]) if old is not None else 0.0
        row = self.dead.append(False)
        for arr, value in ((self.model_index, model_index), (self.content, content),
                           (self.vectors, vector), (self.popularity, popularity)):
            if arr is not None:
                arr.append(value)
        taste = vector[:self.unit.view.shape[1]]
        self.unit.append(taste / max(float(np.linalg.norm(taste)), 1e-12))
        self.item_ids.append(item_id)
        self.titles.append(title)
        self.tags.append(tags)
        if self.clusters is not self.tags:
            self.clusters.append(clusters)
        ids = np.array([row], dtype=np.int64)
        self.index_ann.add_with_ids(vector[None].astype(np.float32), ids)
        self.index_content.add_with_ids(content[None].astype(np.float32), ids)
        pop = self.popularity.view
        self.popular_rows = _insert_by_popularity(self.popular_rows, row, pop)
        for cluster in clusters:
            self.tag_rows[cluster] = _insert_by_popularity(
                self.tag_rows.get(cluster, np.empty(0, np.int64)), row, pop)
        if old is not None:
            self.kill(old)
        self.row_of[item_id] = row
        return row

    def kill(self, row: int) -> None:
        """Never propose this row again; drop it from FAISS where the index allows removal."""
        if self.dead.view[row]:
            return
        self.changes += 1
        self.dead.view[row] = True
        # The popularity and tag lists hold live rows only, so a prefix of them stays enough.
        self.popular_rows = self.popular_rows[self.popular_rows != row]
        for cluster in self.clusters[row]:
            rows = self.tag_rows[cluster]
            self.tag_rows[cluster] = rows[rows != row]
        if isinstance(self.content, IndexRows):
            self.content.keep_before_removal(row)
        ids = np.array([row], dtype=np.int64)
        try:
            # faiss's Python wrapper takes an id array; its type stubs list only an IDSelector
            removed = (self.index_ann.remove_ids(ids)  # type: ignore[arg-type]
                       + self.index_content.remove_ids(ids))  # type: ignore[arg-type]
        except RuntimeError:  # HNSW and GPU indexes cannot remove: results are filtered instead
            removed = 0
        if removed < 2:
            self.dead_in_index += 1


def _insert_by_popularity(rows: np.ndarray, row: int, popularity: np.ndarray) -> np.ndarray:
    """Insert `row` into `rows` (sorted by popularity, descending) after its equals."""
    pos = int(np.searchsorted(-popularity[rows], -popularity[row], side="right"))
    return np.insert(rows, pos, row)


def load_state(bundle: Bundle, settings: Settings) -> RetrievalState:
    """Load one bundle fully (called in a worker thread; nothing shared is touched)."""
    tag_clusters = TagClusters.load(bundle.path)  # identity when the bundle has no tags.json
    columns = ItemColumns.read(bundle, tag_clusters)  # compact: shared/columns.py
    item_ids, tags, clusters = columns.item_ids, columns.tags, columns.clusters
    # Memory-mapped: GrowableRows copies them in blocks, so the file is never held twice.
    content = np.load(bundle.file("content_embeddings.npy"), mmap_mode="r")
    vectors = np.load(bundle.file("item_vectors.npy"), mmap_mode="r")  # read in blocks below
    n = len(item_ids)
    if content.shape[0] != n or vectors.shape[0] != n:
        raise BundleError(f"{bundle.path}: items.json has {n} items but content_embeddings.npy "
                          f"has {content.shape[0]} rows and item_vectors.npy {vectors.shape[0]}")
    cpu_ann = ann.load(bundle.file("index_ann.faiss"))
    kind = ann.index_kind(cpu_ann)
    index_ann, faiss_device = ann.to_gpu_if_available(cpu_ann, settings.use_gpu)
    index_content, _ = ann.to_gpu_if_available(ann.load(bundle.file("index_content.faiss")),
                                               settings.use_gpu)
    index_content = ann.float16_rows(index_content)  # on the CPU: half the rows to read
    large = n > CONTENT_FLOAT16_ABOVE
    # large catalogues: the IVF indexes' own codes are the only copy of the content rows and
    # of the learned vectors (IndexRows; only the content rows are read while serving)
    rows_in_index = large and ann.reconstructable(index_content)
    for name, index, rows in (("index_ann.faiss", index_ann, vectors),
                              ("index_content.faiss", index_content, content)):
        if index.ntotal != n or index.d != rows.shape[1]:
            raise BundleError(f"{bundle.path / name}: {index.ntotal} x {index.d}, expected "
                              f"{n} x {rows.shape[1]}")
    fixed = {"E": content.shape[1], "D": vectors.shape[1]}
    query_encoder = encoder_session(bundle, QUERY_ENCODER, settings, fixed)
    # The item encoder holds a copy of the id-embedding table (260 MB at 1M items) and only
    # serves upserts: above CONTENT_FLOAT16_ABOVE items the first upsert loads it.
    item_encoder = (encoder_session(bundle, ITEM_ENCODER, settings, fixed)
                    if n <= CONTENT_FLOAT16_ABOVE else None)
    text_encoder = None
    if (bundle.path / TEXT_ENCODER.file).is_file():
        text_encoder = OnnxTextEncoder(bundle.path, settings)
    bundle_rows = {item_id: r for r, item_id in enumerate(item_ids)}
    transitions, notes = _transitions(bundle, n)
    popularity = np.array(columns.popularity, dtype=np.float32)
    popular_rows = np.argsort(-popularity, kind="stable").astype(np.int64)
    width = int(vectors.shape[1])
    taste_dim = min(int(bundle.model_info.get("dim", width)), width)
    return RetrievalState(
        bundle=bundle, n_bundle=n,
        item_ids=item_ids, titles=columns.titles, tags=tags, clusters=clusters,
        row_of=dict(bundle_rows), bundle_row_of=bundle_rows,
        model_index=GrowableRows(np.arange(n, dtype=np.int64) + FIRST_ITEM_INDEX),
        content=(IndexRows(index_content, n) if rows_in_index else
                 GrowableRows(content, dtype=np.float16 if large else np.float32)),
        # learned vectors: never read while serving (FAISS holds its own copy to search);
        # kept for small catalogues, where tests and tools compare them with the bundle
        vectors=(None if rows_in_index else
                 GrowableRows(vectors, dtype=np.float16 if large else np.float32)),
        # float16 when large: 128 MB at 1M instead of 256; read in float32 blocks (similar.py)
        unit=_unit_rows(vectors, taste_dim, np.float16 if large else np.float32),
        popularity=GrowableRows(popularity),
        dead=GrowableRows(np.zeros(n, dtype=bool)),
        tag_rows=_tag_index(clusters, popular_rows),
        popular_rows=popular_rows,
        index_ann=index_ann, index_content=index_content, index_kind=kind,
        faiss_device=faiss_device, onnx_device=device_of(query_encoder),
        query_encoder=query_encoder, item_encoder=item_encoder, text_encoder=text_encoder,
        tag_clusters=tag_clusters, max_history=bundle.max_history, transitions=transitions,
        notes=notes,
        item_encoder_loader=lambda: encoder_session(bundle, ITEM_ENCODER, settings, fixed),
    )


def _transitions(bundle: Bundle, n: int) -> tuple[Transitions | None, list[str]]:
    """The bundle's transition counts, or None with a note when it has none."""
    path = bundle.path / TRANSITIONS_FILE
    if not path.is_file():
        return None, [f"no {TRANSITIONS_FILE} (a bundle built before vidrec counted "
                      "transitions): the cooc source proposes nothing until it is rebuilt"]
    try:
        return Transitions.load(path, n), []
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: {exc}") from exc


def _unit_rows(vectors: np.ndarray, taste_dim: int, dtype: DTypeLike) -> GrowableRows:
    """The unit-length taste part of each learned vector, normalised block by block from the
    memory map (no full float32 copy while loading). Similarity between items ignores the
    per-item bias dimension (model.json: vector_dim = dim + 1), which says how popular an item
    is, not what it is like."""
    unit = GrowableRows(np.zeros((0, taste_dim), np.float32), spare=len(vectors) + 1024,
                        dtype=dtype)
    for start in range(0, len(vectors), 65536):
        taste = np.asarray(vectors[start:start + 65536, :taste_dim], dtype=np.float32)
        unit.extend(taste / np.maximum(np.linalg.norm(taste, axis=1, keepdims=True), 1e-12))
    return unit


def _tag_index(clusters: TagColumn, popular_rows: np.ndarray) -> dict[str, np.ndarray]:
    """cluster -> its rows, most popular first: one sort of every (cluster, row) pair by
    cluster then popularity rank, split per cluster (a Python loop over 2M pairs at 1M items
    took seconds)."""
    codes, ends = clusters.codes_and_ends()
    if not len(codes):
        return {}
    rows = np.repeat(np.arange(len(ends), dtype=np.int64), np.diff(ends, prepend=0))
    rank = np.empty(len(ends), dtype=np.int64)
    rank[popular_rows] = np.arange(len(popular_rows))
    order = np.lexsort((rank[rows], codes))
    codes, rows = codes[order], rows[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    names = clusters.names
    return {names[c]: part.copy() for c, part in zip(codes[starts].tolist(),
                                                     np.split(rows, starts[1:]), strict=True)}
