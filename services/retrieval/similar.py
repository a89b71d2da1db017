"""Items like a given item ("similar videos"), from two spaces:

    ann      the learned item vectors (items watched by the same people): cosine of their taste
             part, the same similarity that explains "because you watched ..." (retrieve.py)
    content  the content embeddings (title and tags): a search of index_content

The two lists are interleaved, best first, an item found in both kept once under the first
space that found it. Dead rows and the item itself are never returned.
"""

from __future__ import annotations

import faiss
import numpy as np

from services.retrieval.state import RetrievalState
from shared.contracts import Neighbour

MAX_SIMILAR = 100
UNIT_BLOCK_ROWS = 65_536  # 16 MB of float32 per block of 64-dim rows


def learned_neighbours(state: RetrievalState, row: int, k: int) -> list[tuple[int, float]]:
    """Exact cosine over every live row. index_ann cannot answer this: its vectors carry a
    per-item popularity bias and it scores user . item, not item-to-item likeness. The product
    is one [rows x dim] matrix-vector product (about 1 ms for 50k items), in float32 blocks:
    large catalogues hold `unit` as float16, which numpy multiplies without BLAS."""
    unit = state.unit.view
    query = unit[row].astype(np.float32)
    scores = np.empty(len(unit), np.float32)
    for start in range(0, len(unit), UNIT_BLOCK_ROWS):
        block = unit[start:start + UNIT_BLOCK_ROWS]
        scores[start:start + len(block)] = block.astype(np.float32, copy=False) @ query
    scores[state.dead.view] = -np.inf
    scores[row] = -np.inf
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(r, float(scores[r])) for r in top.tolist() if np.isfinite(scores[r])]


def content_neighbours(state: RetrievalState, row: int, k: int) -> list[tuple[int, float]]:
    """A search of index_content with the item's own embedding (L2-normalised: inner product
    is the cosine), deep enough to skip the item itself and dead rows FAISS still holds."""
    depth = min(state.max_k(), k + 1 + state.dead_in_index)
    if depth <= 0:
        return []
    faiss.omp_set_num_threads(1)  # one query: an OpenMP team only adds waits (retrieve.py)
    query = np.ascontiguousarray(state.content.take([row]), dtype=np.float32)
    scores, rows = state.index_content.search(query, depth)
    dead = state.dead.view
    out = [(r, float(s)) for r, s in zip(rows[0].tolist(), scores[0].tolist(), strict=True)
           if r >= 0 and r != row and not dead[r]]
    return out[:k]


def similar_items(state: RetrievalState, row: int, k: int) -> list[Neighbour]:
    found = {"ann": learned_neighbours(state, row, k),
             "content": content_neighbours(state, row, k)}
    out: list[Neighbour] = []
    taken: set[int] = set()
    for rank in range(k):
        for source, hits in found.items():
            if rank < len(hits) and hits[rank][0] not in taken and len(out) < k:
                r, score = hits[rank]
                taken.add(r)
                out.append(Neighbour(item_id=state.item_ids[r], source=source,
                                     score=score))
    return out
