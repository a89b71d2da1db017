"""ann: the learned space. query_encoder(history) -> user vector, searched in index_ann (one ONNX
run and one FAISS search for the whole batch). The ranker scores by the same inner product."""

from __future__ import annotations

import numpy as np

from services.retrieval.sources.base import NOTHING, Found, Prepared, search_index, with_history
from services.retrieval.state import RetrievalState
from shared.contracts import Source
from shared.onnx_graphs import QUERY_ENCODER


def user_vectors(state: RetrievalState, histories: list[np.ndarray]) -> np.ndarray:
    """query_encoder over left-padded histories (padding: index 0, zero content)."""
    length = max(len(h) for h in histories)
    ids = np.zeros((len(histories), length), np.int64)
    content = np.zeros((len(histories), length, state.content_dim), np.float32)
    model_index = state.model_index.view
    for b, h in enumerate(histories):
        ids[b, length - len(h):] = model_index[h]
        content[b, length - len(h):] = state.content.take(h)
    return QUERY_ENCODER.run(state.query_encoder, hist_ids=ids, hist_content=content)["user_vec"]


class AnnSource:
    name: Source = "ann"

    def search(self, state: RetrievalState, batch: list[Prepared]) -> list[Found]:
        todo = with_history(state, batch, self.name)
        if not todo:
            return [NOTHING] * len(batch)
        queries = user_vectors(state, [batch[i].hist_rows for i in todo])
        return search_index(state, state.index_ann, queries, batch, todo, self.name)


SOURCE = AnnSource()
