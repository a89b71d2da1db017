"""content: the recency-weighted mean of the recent history's content embeddings, searched in
index_content (one FAISS search for the batch)."""

from __future__ import annotations

import numpy as np

from services.retrieval.sources.base import NOTHING, Found, Prepared, search_index, with_history
from services.retrieval.state import RetrievalState
from shared.contracts import Source
from shared.recency import recency_weights

RECENT = 10           # history items the content query averages (as the offline baseline)


def content_queries(state: RetrievalState, histories: list[np.ndarray]) -> np.ndarray:
    out = np.empty((len(histories), state.content_dim), np.float32)
    for b, h in enumerate(histories):
        recent = h[-RECENT:]
        out[b] = recency_weights(len(recent)) @ state.content.take(recent)
    unit: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return unit


class ContentSource:
    name: Source = "content"

    def search(self, state: RetrievalState, batch: list[Prepared]) -> list[Found]:
        todo = with_history(state, batch, self.name)
        if not todo:
            return [NOTHING] * len(batch)
        queries = content_queries(state, [batch[i].hist_rows for i in todo])
        return search_index(state, state.index_content, queries, batch, todo, self.name)


SOURCE = ContentSource()
