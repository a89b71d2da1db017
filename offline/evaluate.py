"""Full-ranking evaluation: every catalogue item is scored, already-seen items are excluded,
and the held-out item's rank is counted exactly (ties broken by catalogue row)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from offline.metrics import summarise
from offline.split import Split
from shared.bundle import FIRST_ITEM_INDEX

# score_fn(user positions) -> float32 [len(positions), num_items] over bundle rows;
# -inf marks an item that model does not propose at all.
ScoreFn = Callable[[np.ndarray], np.ndarray]


SCORES_PER_CHUNK = 1 << 26  # 256 MB of float32 scores per chunk of users (1M items: 67 users)


def target_ranks(split: Split, which: str, score_fn: ScoreFn, users: np.ndarray | None = None,
                 chunk: int | None = None) -> np.ndarray:
    users = split.evaluable(which) if users is None else users
    chunk = chunk or max(16, min(1024, SCORES_PER_CHUNK // max(1, split.num_items)))
    targets = getattr(split, which)
    ranks = np.empty(len(users), np.int64)
    for start in range(0, len(users), chunk):
        block = users[start:start + chunk]
        scores = np.array(score_fn(block), dtype=np.float32, copy=True)
        rows = np.arange(len(block))
        tgt = targets[block] - FIRST_ITEM_INDEX
        for r, u in enumerate(block):  # exclude what the user saw before the target
            seen = split.history(u, which) - FIRST_ITEM_INDEX
            scores[r, seen[seen != tgt[r]]] = -np.inf
        t_score = scores[rows, tgt][:, None]
        col = np.arange(scores.shape[1])[None, :]
        better = (scores > t_score) | ((scores == t_score) & (col < tgt[:, None]))
        rank = better.sum(axis=1)
        rank[np.isneginf(t_score[:, 0])] = -1  # not proposed at all: a miss
        ranks[start:start + len(block)] = rank
    return ranks


def evaluate(split: Split, which: str, score_fn: ScoreFn, users: np.ndarray | None = None
             ) -> dict[str, float]:
    return summarise(target_ranks(split, which, score_fn, users))


def sample_users(split: Split, which: str, n: int | None, seed: int) -> np.ndarray:
    users = split.evaluable(which)
    if n is None or n >= len(users):
        return users
    return np.sort(np.random.default_rng(seed).choice(users, n, replace=False))
