"""What every candidate source shares: the prepared query it reads, what it returns, and the
FAISS search the two embedding sources run.

A source is one object with a `name` (its key in caps, `per_source` and `Candidate.source`) and
one method, `search(state, batch)`, which answers a whole batch of prepared queries at once: up to
`caps[name]` rows per query, best first, none of them blocked (excluded, in the history, dead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from services.retrieval.state import RetrievalState
from shared.contracts import Source

NO_ROWS = np.empty(0, np.int64)
NO_SCORES = np.empty(0, np.float32)
Found = tuple[np.ndarray, np.ndarray]  # (rows, scores), best first
NOTHING: Found = (NO_ROWS, NO_SCORES)


@dataclass
class Prepared:
    """One query, resolved against one state (retrieve.prepare)."""

    hist_rows: np.ndarray  # rows of the known history items, oldest first, <= max_history
    blocked: np.ndarray    # bool [rows]: excluded, in the history, or dead
    n_blocked: int         # upper bound of blocked rows a search can meet
    caps: dict[str, int]
    tags: dict[str, float]          # cluster -> weight
    resolved: dict[str, list[str]]  # query tags that are not themselves a cluster -> clusters


class CandidateSource(Protocol):
    name: Source

    def search(self, state: RetrievalState, batch: list[Prepared]) -> list[Found]:
        """One (rows, scores) per prepared query, in the batch's order."""
        ...


def search_index(state: RetrievalState, index: faiss.Index, queries: np.ndarray,
                 batch: list[Prepared], todo: list[int], name: str) -> list[Found]:
    """One FAISS search for the queries of `todo` (positions in `batch`, one query row each);
    blocked rows are dropped and each query is cut to its cap. FAISS is searched deeper by the
    number of blocked rows so that removals never leave a source short of its cap."""
    found: list[Found] = [NOTHING] * len(batch)
    k = min(state.max_k(), max(batch[i].caps[name] + batch[i].n_blocked for i in todo))
    # One request's search is small: an OpenMP team only adds barrier waits (on a busy machine
    # spinning threads made a 5k-row search ~100x slower). The setting is per calling thread.
    faiss.omp_set_num_threads(1)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    for b, i in enumerate(todo):
        p, rows, s = batch[i], ids[b], scores[b]
        keep = rows >= 0
        rows, s = rows[keep], s[keep]
        keep = ~p.blocked[rows]
        cap = p.caps[name]
        found[i] = (rows[keep][:cap], s[keep][:cap])
    return found


def with_history(state: RetrievalState, batch: list[Prepared], name: str) -> list[int]:
    """Positions of the queries an embedding source can answer: a known history, a cap > 0."""
    if state.max_k() == 0:
        return []
    return [i for i, p in enumerate(batch) if len(p.hist_rows) and p.caps[name] > 0]
