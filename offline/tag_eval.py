"""Tag clusters measured against exact tags, with the serving code itself (the retrieval tag
source and the gateway's query tags), on a bundle's items and users:

- cold start: a new user states as interests the tags of their first three videos and is
  evaluated on their fourth; the list is the tag source's candidates (popularity fills the
  rest), as a brand-new user's candidates; HR@10 / NDCG@10 (and HR@50) for the popular list,
  exact tags and clusters, and how many users' fourth video carries one of the stated tags /
  is in one of their clusters;
- tag-source recall@N for known users: the profile of everything before their last video
  (`vidrec load`'s import weights), its strongest tags as the query, the last video as target.

No ONNX or FAISS: the tag source only needs the inverted index and the popularity order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.metrics import hit_rate, ndcg
from services.feature_store.profile import import_profile
from services.gateway.pipeline.retrieve import query_tags
from services.retrieval.sources import Prepared
from services.retrieval.sources.tags import resolve_tags, tag_matches
from services.retrieval.state import _tag_index
from shared.columns import TagColumn
from shared.tags import TagClusters

COLD_START_SEEN = 3
TOP_K = 10
LONG_K = 50


@dataclass
class _View:
    view: np.ndarray


@dataclass
class TagIndex:
    """The part of RetrievalState the tag source reads (services/retrieval/state.py)."""

    tag_clusters: TagClusters
    tag_rows: dict[str, np.ndarray]
    popularity: _View
    popular_rows: np.ndarray
    row_of: dict[str, int]
    clusters: list[tuple[str, ...]]
    text_encoder: None = None

    @classmethod
    def build(cls, items: list[dict], clusters: TagClusters) -> TagIndex:
        popularity = np.array([float(it.get("popularity", 0.0)) for it in items], np.float32)
        popular_rows = np.argsort(-popularity, kind="stable").astype(np.int64)
        per_row = [tuple(clusters.clusters(it.get("tags") or [])) for it in items]
        return cls(clusters, _tag_index(TagColumn(per_row), popular_rows), _View(popularity),
                   popular_rows,
                   {str(it["item_id"]): r for r, it in enumerate(items)}, per_row)

    def candidates(self, tags: dict[str, float], blocked_rows: list[int], cap: int,
                   fill: int = 0) -> np.ndarray:
        """The tag source's rows for a query, then popular rows up to `fill` in all."""
        blocked = np.zeros(len(self.clusters), bool)
        blocked[blocked_rows] = True
        weights, resolved = resolve_tags(self, tags)  # type: ignore[arg-type]
        p = Prepared(np.empty(0, np.int64), blocked, len(blocked_rows), {"tags": cap},
                     weights, resolved)
        rows, _ = tag_matches(self, p)  # type: ignore[arg-type]
        if len(rows) >= fill:
            return rows
        taken = set(rows.tolist())
        head = self.popular_rows[:fill + len(blocked_rows) + len(rows)]
        extra = [r for r in head.tolist() if not blocked[r] and r not in taken]
        return np.concatenate([rows, np.array(extra[:fill - len(rows)], np.int64)])


def _ranks(lists: list[np.ndarray], targets: list[int]) -> np.ndarray:
    out = np.full(len(lists), -1, np.int64)
    for i, (rows, t) in enumerate(zip(lists, targets, strict=True)):
        hit = np.flatnonzero(rows == t)
        if len(hit):
            out[i] = int(hit[0])
    return out


def _scores(ranks: np.ndarray) -> dict[str, float]:
    return {"HR@10": round(hit_rate(ranks, TOP_K), 5), "NDCG@10": round(ndcg(ranks, TOP_K), 5),
            f"HR@{LONG_K}": round(hit_rate(ranks, LONG_K), 5)}


def cold_start(items: list[dict], users: dict[str, list[str]], clusters: TagClusters,
               cap: int, max_users: int | None = None, seed: int = 0,
               confidence: bool = False) -> dict:
    exact, by_cluster = TagIndex.build(items, TagClusters.identity()), \
        TagIndex.build(items, clusters)
    tags_of = [tuple(it.get("tags") or []) for it in items]
    chosen = _users(users, COLD_START_SEEN + 1, max_users, seed)
    lists: dict[str, list[np.ndarray]] = {"popular": [], "exact_tags": [], "clusters": []}
    targets, with_interests, share_tag, share_cluster = [], 0, 0, 0
    for seq in chosen:
        first = [exact.row_of[i] for i in seq[:COLD_START_SEEN]]
        target = exact.row_of[seq[COLD_START_SEEN]]
        targets.append(target)
        interests = dict.fromkeys((t for r in first for t in tags_of[r]), 1.0)
        with_interests += bool(interests)
        share_tag += not interests.keys().isdisjoint(tags_of[target])
        share_cluster += not {c for r in first for c in by_cluster.clusters[r]}.isdisjoint(
            by_cluster.clusters[target])
        lists["popular"].append(exact.candidates({}, first, 0, LONG_K))
        lists["exact_tags"].append(exact.candidates(interests, first, cap, LONG_K))
        lists["clusters"].append(by_cluster.candidates(interests, first, cap, LONG_K))
    n = max(1, len(chosen))
    out: dict = {"users": len(chosen), "users_with_interests": with_interests,
                 "candidates_tags": cap,
                 "next_video_carries_a_stated_tag": round(share_tag / n, 5),
                 "next_video_in_a_stated_cluster": round(share_cluster / n, 5)}
    ranks = {name: _ranks([r[:LONG_K] for r in rows], targets) for name, rows in lists.items()}
    for name, r in ranks.items():
        out[name] = _scores(r)
    for metric, gain in (("NDCG@10", _ndcg_gains), ("HR@10", _hits)):
        exact, clusters = gain(ranks["exact_tags"]), gain(ranks["clusters"])
        out[f"clusters_vs_exact_{metric}"] = _relative(exact, clusters, confidence)
    return out


def _ndcg_gains(ranks: np.ndarray) -> np.ndarray:
    inside = (ranks >= 0) & (ranks < TOP_K)
    return np.where(inside, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def _hits(ranks: np.ndarray) -> np.ndarray:
    return ((ranks >= 0) & (ranks < TOP_K)).astype(float)


def _relative(exact: np.ndarray, clusters: np.ndarray, confidence: bool) -> dict:
    """clusters / exact - 1 over the same users, with a paired bootstrap 95% interval."""
    if not exact.sum():
        return {"relative": None}
    out: dict = {"relative": round(float(clusters.mean() / exact.mean() - 1), 4)}
    if confidence and len(exact) > 1:
        from scipy.stats import bootstrap

        ci = bootstrap((exact, clusters), lambda e, c, axis=-1: c.mean(axis=axis)
                       / e.mean(axis=axis) - 1, paired=True, vectorized=True,
                       n_resamples=1000, batch=50, random_state=0).confidence_interval
        out["ci95"] = [round(float(ci.low), 4), round(float(ci.high), 4)]
    return out


def tag_source_recall(items: list[dict], users: dict[str, list[str]], clusters: TagClusters,
                      cap: int, max_users: int | None = None, seed: int = 0) -> dict:
    exact, by_cluster = TagIndex.build(items, TagClusters.identity()), \
        TagIndex.build(items, clusters)
    tags_of = [tuple(it.get("tags") or []) for it in items]
    chosen = _users(users, 3, max_users, seed)
    hits = {"exact_tags": [], "clusters": []}
    for seq in chosen:
        before = [exact.row_of[i] for i in seq[:-1]]
        target = exact.row_of[seq[-1]]
        for name, index in (("exact_tags", exact), ("clusters", by_cluster)):
            profile = import_profile(index.clusters[r] if index is by_cluster else tags_of[r]
                                     for r in before)
            rows = index.candidates(query_tags(profile, ()), before, cap)
            hits[name].append(float(target in set(rows.tolist())))
    return {"users": len(chosen), "N": cap,
            **{f"{name}_recall@{cap}": round(float(np.mean(h)), 5) if h else 0.0
               for name, h in hits.items()}}


def _users(users: dict[str, list[str]], min_len: int, max_users: int | None,
           seed: int) -> list[list[str]]:
    seqs = [users[u] for u in sorted(users) if len(users[u]) >= min_len]
    if max_users is not None and len(seqs) > max_users:
        pick = np.random.default_rng(seed).choice(len(seqs), max_users, replace=False)
        seqs = [seqs[i] for i in sorted(pick)]
    return seqs


def split_users(users: dict[str, list[str]], validation: int = 10_000, seed: int = 1,
                ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(validation, evaluation): a fixed random set of `validation` users with enough history
    for the cold-start protocol, and every other user. Choices (orders, weights) are made on
    the first and measured once on the second."""
    eligible = sorted(u for u, seq in users.items() if len(seq) >= COLD_START_SEEN + 1)
    chosen = np.random.default_rng(seed).permutation(len(eligible))[
        :min(validation, len(eligible) // 2)]
    valid = {eligible[i]: users[eligible[i]] for i in sorted(chosen.tolist())}
    return valid, {u: seq for u, seq in users.items() if u not in valid}


def metrics_line(items: list[dict], users: dict[str, list[str]], clusters: TagClusters,
                 cap: int, max_users: int = 5000) -> dict:
    """The `tag_clusters` entry of metrics.json (a sample of users, fixed seed)."""
    cold = cold_start(items, users, clusters, cap, max_users)
    recall = tag_source_recall(items, users, clusters, cap, max_users)
    return {"cold_start_users": cold["users"],
            "cold_start_NDCG@10": {k: cold[k]["NDCG@10"]
                                   for k in ("popular", "exact_tags", "clusters")},
            "cold_start_HR@10": {k: cold[k]["HR@10"]
                                 for k in ("popular", "exact_tags", "clusters")},
            f"tag_source_recall@{cap}": {k: recall[f"{k}_recall@{cap}"]
                                         for k in ("exact_tags", "clusters")}}
