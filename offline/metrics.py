"""Ranking metrics for leave-one-out evaluation (one held-out item per user)."""

from __future__ import annotations

import numpy as np


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in its ranked list; -1 when absent.

    ranked: [U, K] item indices, best first; targets: [U].
    """
    hits = ranked == targets[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), -1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """With one relevant item the ideal DCG is 1, so NDCG = 1/log2(rank + 2) inside the top k."""
    if not len(ranks):
        return 0.0
    inside = (ranks >= 0) & (ranks < k)
    gains = np.zeros(len(ranks))
    gains[inside] = 1.0 / np.log2(ranks[inside] + 2.0)
    return float(gains.mean())


def candidate_hits(candidates: list[np.ndarray] | np.ndarray, targets: np.ndarray
                   ) -> np.ndarray:
    """Per user, 1.0 when the target is among that user's candidates, else 0.0."""
    return np.array([float(t in set(c.tolist())) for c, t in zip(candidates, targets,
                                                                   strict=True)])


def recall_at(candidates: list[np.ndarray] | np.ndarray, targets: np.ndarray) -> float:
    """Share of users whose target is among their candidates."""
    return float(candidate_hits(candidates, targets).mean()) if len(targets) else 0.0


def summarise(ranks: np.ndarray) -> dict[str, float]:
    return {"HR@10": hit_rate(ranks, 10), "NDCG@10": ndcg(ranks, 10), "HR@50": hit_rate(ranks, 50)}
