"""What the ranker learns from: the retrieval stage's own candidate sets for training users.

The tower that proposes the ranker's training candidates must not have learned the item the
ranker is asked to find, or its scores would look far better than they ever are at serving
time (the ranker would learn to trust them blindly). So the build's validation run trains the
tower on each user's train sequence *minus its last item* (`holdout_last_train`); that held-out
item is the ranker's training target, with the rest of the train sequence as history. Neither
validation nor test items take part: validation only picks epochs and ranker settings, the test
item is only evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.split import Split
from shared.ranker_features import ItemStats, union_ranks
from shared.transitions import best_first


def holdout_last_train(split: Split) -> tuple[Split, np.ndarray]:
    """The split with each train sequence's last item removed (users with at least two train
    items), and that item per user (model index; 0 = none held out)."""
    train, held = [], np.zeros(len(split.users), np.int64)
    for u, seq in enumerate(split.train):
        if len(seq) >= 2:
            train.append(seq[:-1])
            held[u] = seq[-1]
        else:
            train.append(seq)
    return Split(split.item_ids, split.users, train, split.valid, split.test), held


@dataclass
class Example:
    """One user's ranking problem: candidates (bundle rows) with their retrieval facts."""

    user: int
    history: np.ndarray   # bundle rows, oldest first
    rows: np.ndarray      # candidate bundle rows, in retrieval's union order
    source: np.ndarray    # int8 index into shared.ranker_features.SOURCES
    rank: np.ndarray      # position within its source's part of the union
    score: np.ndarray     # the source's own score
    target: int           # bundle row of the item to find (-1: none)


PROFILE_TAGS = 10  # strongest profile clusters the tag source asks for (as the gateway does)


def _top(scores: np.ndarray, cap: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `cap` highest finite scores, best first (ties: higher tiebreak first)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if tiebreak is not None:
        return finite[np.lexsort((-tiebreak[finite], -scores[finite]))[:cap]]
    if len(finite) > cap:
        finite = finite[np.argpartition(-scores[finite], cap - 1)[:cap]]
    return finite[np.argsort(-scores[finite], kind="stable")]


NONE_FOUND = (np.empty(0, np.int64), np.empty(0, np.float32))


def _searched(scores: np.ndarray, blocked: np.ndarray, cap: int, hist: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray]:
    """An embedding source (ann, content): the `cap` best unblocked rows of a full score row."""
    if cap <= 0 or not len(hist):
        return NONE_FOUND
    s = np.where(blocked, -np.inf, scores)
    top = _top(s, cap)
    return top, s[top]


def _followed(stats: ItemStats, hist: np.ndarray, blocked: np.ndarray, cap: int,
              ) -> tuple[np.ndarray, np.ndarray]:
    """The cooc source over the problem's own transitions (stats.cooc)."""
    if cap <= 0 or not len(hist):
        return NONE_FOUND
    rows, s = stats.cooc.after(hist)
    keep = ~blocked[rows]
    rows, s = rows[keep], s[keep]
    top = best_first(rows, s, cap, stats.popularity)
    return rows[top], s[top]


def candidate_examples(item_vecs: np.ndarray, user_vecs: np.ndarray, stats: ItemStats,
                       histories: list[np.ndarray], targets: np.ndarray, users: np.ndarray,
                       caps: dict[str, int], chunk: int = 512) -> list[Example]:
    """Each user's candidate set as retrieval assembles it (services/retrieval/retrieve.py):
    ann (tower inner product), cooc (what followed the newest items, from `stats.cooc`: the
    problem's own window), content (recency-weighted recent content mean), tags (the history's
    strongest tag clusters) and popular, each up to its cap of unseen items; the union keeps an
    item under the first source that proposed it (ann > cooc > content > tags > popular).

    histories/targets: bundle rows (target -1 = none), one per entry of `users`.
    """
    from scipy import sparse

    from shared.ranker_features import RECENT, tag_profile
    from shared.recency import recency_weights

    n = len(stats.popularity)
    item_tags = sparse.csr_matrix((np.ones(len(stats.tag_ids), np.float32), stats.tag_ids,
                                   stats.tag_ptr), shape=(n, max(len(stats.tag_names), 1)))
    popular = np.argsort(-stats.popularity, kind="stable")
    out: list[Example] = []
    for start in range(0, len(users), chunk):
        stop = min(start + chunk, len(users))
        ann_scores = user_vecs[start:stop] @ item_vecs.T
        queries = np.zeros((stop - start, stats.content.shape[1]), np.float32)
        for b in range(stop - start):
            recent = histories[start + b][-RECENT:]
            if len(recent):
                queries[b] = recency_weights(len(recent)) @ stats.content[recent]
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        content_scores = queries @ stats.content.T
        for b in range(stop - start):
            i = start + b
            hist = histories[i]
            blocked = np.zeros(n, bool)
            blocked[hist] = True
            found = [_searched(ann_scores[b], blocked, caps.get("ann", 0), hist),
                     _followed(stats, hist, blocked, caps.get("cooc", 0)),
                     _searched(content_scores[b], blocked, caps.get("content", 0), hist)]
            profile = tag_profile(stats, hist)
            cap = caps.get("tags", 0)
            if profile and cap > 0:
                strongest = sorted(profile.items(), key=lambda kv: -kv[1])[:PROFILE_TAGS]
                peak = strongest[0][1]
                vec = np.zeros(item_tags.shape[1], np.float32)
                for t, w in strongest:
                    vec[t] = w / peak
                s = item_tags @ vec
                s = np.where(blocked | (s <= 0), -np.inf, s)
                top = _top(s, cap, stats.popularity)
                found.append((top, s[top].astype(np.float32)))
            else:
                found.append(NONE_FOUND)
            cap = caps.get("popular", 0)
            head = popular[:cap + len(hist)]
            head = head[~blocked[head]][:cap]
            found.append((head, stats.popularity[head]))
            rows = np.concatenate([f[0] for f in found]).astype(np.int64)
            scores = np.concatenate([f[1] for f in found]).astype(np.float32)
            source = np.repeat(np.arange(len(found)), [len(f[0]) for f in found])
            _, first = np.unique(rows, return_index=True)
            first.sort()
            src = source[first].astype(np.int8)
            out.append(Example(int(users[i]), hist, rows[first], src, union_ranks(src.tolist()),
                               scores[first], int(targets[i])))
    return out
