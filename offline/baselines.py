"""Baselines computed in the same run and scored by the same evaluation: popularity,
content_ann (nearest pretrained embeddings to the user's recent history) and item_knn
(item co-occurrence, cosine-normalised)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from offline.evaluate import ScoreFn
from offline.split import Split
from shared.bundle import FIRST_ITEM_INDEX
from shared.recency import recency_weights

RECENT = 10        # history items a baseline looks at


def train_popularity(split: Split) -> np.ndarray:
    counts = np.zeros(split.num_items, np.float32)
    for seq in split.train:
        np.add.at(counts, seq - FIRST_ITEM_INDEX, 1.0)
    return counts


def popularity_fn(split: Split) -> ScoreFn:
    counts = train_popularity(split)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def user_content_queries(split: Split, which: str, users: np.ndarray,
                         content: np.ndarray) -> np.ndarray:
    """Recency-weighted mean of the last RECENT history content embeddings, L2-normalised."""
    q = np.zeros((len(users), content.shape[1]), np.float32)
    for r, u in enumerate(users):
        h = split.history(u, which)[-RECENT:] - FIRST_ITEM_INDEX
        if len(h):
            q[r] = recency_weights(len(h)) @ content[h]
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def content_ann_fn(split: Split, which: str, content: np.ndarray) -> ScoreFn:
    return lambda users: user_content_queries(split, which, users, content) @ content.T


def cooccurrence(split: Split) -> sparse.csr_matrix:
    """Item x item counts of users who interacted with both, cosine-normalised, no diagonal."""
    rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(split.train)])
    cols = np.concatenate(split.train) - FIRST_ITEM_INDEX
    x = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                          shape=(len(split.train), split.num_items))
    x.data[:] = 1.0  # repeated views count once
    c = (x.T @ x).tocsr()
    norms = np.sqrt(np.maximum(c.diagonal(), 1.0)).astype(np.float32)
    c.setdiag(0.0)
    c.eliminate_zeros()
    inv = sparse.diags(1.0 / norms)
    return (inv @ c @ inv).tocsr().astype(np.float32)


def item_knn_fn(split: Split, which: str, sim: sparse.csr_matrix | None = None) -> ScoreFn:
    sim = cooccurrence(split) if sim is None else sim

    def score(users: np.ndarray) -> np.ndarray:
        rows, cols, vals = [], [], []
        for r, u in enumerate(users):
            h = split.history(u, which)[-RECENT:] - FIRST_ITEM_INDEX
            rows.append(np.full(len(h), r))
            cols.append(h)
            vals.append(recency_weights(len(h)))
        hist = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                  np.concatenate(cols))), shape=(len(users), split.num_items))
        return np.asarray((hist @ sim).todense(), dtype=np.float32)

    return score
