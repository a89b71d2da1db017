"""How much a history item counts by how recent it is: the one weighting every recency-weighted
read of a history uses (retrieval's content query and cooc source, the ranker's content and
cooc features, the content baseline), so offline and serving weigh the same way."""

from __future__ import annotations

import numpy as np

RECENCY_DECAY = 0.8  # weight of an item one step older than the next


def recency_weights(k: int) -> np.ndarray:
    """float32 [k] for k items oldest first: the newest weighs 1, each older one
    RECENCY_DECAY times the next."""
    return RECENCY_DECAY ** np.arange(k - 1, -1, -1, dtype=np.float32)
