"""Candidates for a batch of queries from four sources, over one RetrievalState.

    ann      the learned space: query_encoder(history) -> user vector, searched in index_ann
             (one ONNX run and one FAISS search for the whole batch)
    content  recency-weighted mean of the recent history's content embeddings, searched in
             index_content (one FAISS search for the batch)
    tags     items in the clusters of the query's weighted tags (inverted index), those
             matching the most query weight first, then the clusters taking turns (each
             one's most popular first); a query tag the
             bundle does not know is embedded and matched to the nearest clusters
             (shared/tags.py), so an interest "football" finds `soccer`
    popular  the bundle's popularity order (what a new user gets)

Each source proposes up to its cap of items that are not excluded, not in the history and not
dead; the union keeps an item under the first source that proposed it (ann > content > tags >
popular) and `per_source` counts every proposal, duplicates included. FAISS is searched deeper
by the number of blocked rows so that removals never leave a source short of its cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from services.retrieval.errors import InvalidRequest
from services.retrieval.state import RetrievalState
from shared.contracts import RetrievalQuery, RetrievalResult, Source

SOURCES: tuple[Source, ...] = ("ann", "content", "tags", "popular")
RECENT = 10           # history items the content query averages (as the offline baseline)
RECENCY_DECAY = 0.8   # weight of an item one step older than the next
MAX_QUERY_TAGS = 20   # strongest query tags the tag source looks up
MAX_CAP = 2000        # per source; faiss GPU answers at most 2048 neighbours
# Clusters take turns among equal tag scores (tag_source); False: popularity alone breaks the
# ties, the order before (kept so that bench/tags.py can measure both in one run).
TAKE_TURNS = True

_NO_ROWS = np.empty(0, np.int64)
_NO_SCORES = np.empty(0, np.float32)
Found = tuple[np.ndarray, np.ndarray]  # (rows, scores), best first


@dataclass
class Prepared:
    hist_rows: np.ndarray  # rows of the known history items, oldest first, <= max_history
    blocked: np.ndarray    # bool [rows]: excluded, in the history, or dead
    n_blocked: int         # upper bound of blocked rows a search can meet
    caps: dict[str, int]
    tags: dict[str, float]          # cluster -> weight
    resolved: dict[str, list[str]]  # query tags that are not themselves a cluster -> clusters


def resolve_caps(query: RetrievalQuery, defaults: dict[str, int], position: int) -> dict[str, int]:
    caps = {**defaults, **query.caps}
    for source, cap in caps.items():
        if not 0 <= cap <= MAX_CAP:
            raise InvalidRequest(f"queries[{position}].caps.{source}",
                                 f"must be between 0 and {MAX_CAP}, got {cap}")
    return caps


def prepare(state: RetrievalState, query: RetrievalQuery, caps: dict[str, int]) -> Prepared:
    row_of = state.row_of
    # History items unknown to the catalogue carry no signal (no content, no id): dropped.
    hist = [r for r in map(row_of.get, query.history) if r is not None]
    excluded = [r for r in map(row_of.get, query.exclude) if r is not None]
    blocked = state.dead.view.copy()
    blocked[hist] = True
    blocked[excluded] = True
    tags, resolved = resolve_tags(state, query.tags) if query.tags else ({}, {})
    return Prepared(hist_rows=np.array(hist[-state.max_history:], dtype=np.int64),
                    blocked=blocked,
                    n_blocked=len(hist) + len(excluded) + state.dead_in_index,
                    caps=caps, tags=tags, resolved=resolved)


def resolve_tags(state: RetrievalState, tags: dict[str, float],
                 ) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Query tags -> cluster weights, and how each query tag that is not itself a cluster name
    was resolved. Tags of one cluster add up (`king glory` and `kingglory` stated together
    weigh twice, as they would in a tag profile); a tag reaching a cluster by embedding counts
    with its similarity."""
    clusters = state.tag_clusters
    out: dict[str, float] = {}
    resolved: dict[str, list[str]] = {}
    strongest = sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_QUERY_TAGS]
    for tag, weight in strongest:
        if weight <= 0:
            continue
        found = clusters.resolve(tag, state.text_encoder)
        if [c for c, _ in found] != [tag]:
            resolved[tag] = [c for c, _ in found]
        for cluster, sim in found:
            out[cluster] = out.get(cluster, 0.0) + weight * sim
    return out, resolved


# ---- sources ------------------------------------------------------------------------------
def user_vectors(state: RetrievalState, histories: list[np.ndarray]) -> np.ndarray:
    """query_encoder over left-padded histories (padding: index 0, zero content)."""
    length = max(len(h) for h in histories)
    ids = np.zeros((len(histories), length), np.int64)
    content = np.zeros((len(histories), length, state.content_dim), np.float32)
    model_index, table = state.model_index.view, state.content.view
    for b, h in enumerate(histories):
        ids[b, length - len(h):] = model_index[h]
        content[b, length - len(h):] = table[h]
    return state.query_encoder.run(None, {"hist_ids": ids, "hist_content": content})[0]


def content_queries(state: RetrievalState, histories: list[np.ndarray]) -> np.ndarray:
    table = state.content.view
    out = np.empty((len(histories), state.content_dim), np.float32)
    for b, h in enumerate(histories):
        recent = h[-RECENT:]
        weights = RECENCY_DECAY ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)
        out[b] = weights @ table[recent]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def search_source(state: RetrievalState, prepared: list[Prepared], source: str) -> list[Found]:
    """ann or content for the whole batch: one encoder run, one FAISS search."""
    found: list[Found] = [(_NO_ROWS, _NO_SCORES)] * len(prepared)
    todo = [i for i, p in enumerate(prepared) if len(p.hist_rows) and p.caps[source] > 0]
    if not todo or state.max_k() == 0:
        return found
    histories = [prepared[i].hist_rows for i in todo]
    if source == "ann":
        index, queries = state.index_ann, user_vectors(state, histories)
    else:
        index, queries = state.index_content, content_queries(state, histories)
    k = min(state.max_k(), max(prepared[i].caps[source] + prepared[i].n_blocked for i in todo))
    # One request's search is small: an OpenMP team only adds barrier waits (on a busy machine
    # spinning threads made a 5k-row search ~100x slower). The setting is per calling thread.
    faiss.omp_set_num_threads(1)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    for b, i in enumerate(todo):
        p, rows, s = prepared[i], ids[b], scores[b]
        keep = rows >= 0
        rows, s = rows[keep], s[keep]
        keep = ~p.blocked[rows]
        cap = p.caps[source]
        found[i] = (rows[keep][:cap], s[keep][:cap])
    return found


def tag_source(state: RetrievalState, p: Prepared) -> Found:
    """Every item in one of the query's clusters, scored by the summed weight of the query
    clusters it carries (how many of the stated interests it matches, each as often as it was
    stated). Among items of equal score the query's clusters take turns: an item's place inside
    the cluster it matched by (the clusters' own popularity order; its best place when it
    matched several) comes first, popularity then. So the top of the list holds the most popular
    videos of *each* interest, not of the one interest with the most popular videos: for a new
    user, which interest the next video comes from is unknown, and the round robin hedges
    across them (docs/tags.md measures it, chosen on validation users). The whole matched set
    is scored, not each cluster's most popular `cap`, so an item matching three interests
    outranks a more popular one matching a single interest (the largest MicroLens cluster holds
    ~800 items, so this stays cheap)."""
    cap = p.caps["tags"]
    top = sorted(((w, t) for t, w in p.tags.items() if w > 0 and t in state.tag_rows),
                 reverse=True)[:MAX_QUERY_TAGS]
    if cap <= 0 or not top:
        return _NO_ROWS, _NO_SCORES
    parts, weights, places = [], [], []
    for weight, tag in top:
        rows = state.tag_rows[tag]
        rows = rows[~p.blocked[rows]]
        parts.append(rows)
        weights.append(np.full(len(rows), weight, np.float64))
        places.append(np.arange(len(rows), dtype=np.int64))  # rows: most popular first
    rows, inverse = np.unique(np.concatenate(parts), return_inverse=True)
    scores = np.bincount(inverse, weights=np.concatenate(weights))
    place = np.full(len(rows), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(place, inverse, np.concatenate(places))
    keys = (-state.popularity.view[rows], place, -scores) if TAKE_TURNS else \
        (-state.popularity.view[rows], -scores)
    order = np.lexsort(keys)[:cap]
    return rows[order], scores[order].astype(np.float32)


def popular_source(state: RetrievalState, cap: int, blocked: np.ndarray, n_blocked: int) -> Found:
    if cap <= 0:
        return _NO_ROWS, _NO_SCORES
    head = state.popular_rows[:cap + n_blocked]
    head = head[~blocked[head]][:cap]
    return head, state.popularity.view[head]


# ---- union and explanation ----------------------------------------------------------------
def assemble(state: RetrievalState, p: Prepared, found: list[Found]) -> RetrievalResult:
    per_source = {source: len(rows) for source, (rows, _) in zip(SOURCES, found, strict=True)}
    rows = np.concatenate([f[0] for f in found])
    if not len(rows):
        return RetrievalResult(candidates=[], per_source=per_source, resolved_tags=p.resolved)
    scores = np.concatenate([f[1].astype(np.float32, copy=False) for f in found])
    source = np.repeat(np.arange(len(SOURCES)), [len(f[0]) for f in found])
    _, first = np.unique(rows, return_index=True)  # first proposal of each row wins
    first.sort()
    rows, scores, source = rows[first], scores[first], source[first]
    ids = state.item_ids
    row_list = rows.tolist()
    if len(p.hist_rows):
        # Cosine of learned vectors: the watched item most like each candidate.
        watched = np.unique(p.hist_rows)
        unit = state.unit.view
        best = watched[(unit[rows] @ unit[watched].T).argmax(axis=1)]
        nearest = [ids[r] for r in best.tolist()]
    else:
        nearest = [None] * len(row_list)
    if p.tags:
        wanted, item_clusters = p.tags, state.clusters
        matched = [[t for t in item_clusters[r] if t in wanted] for r in row_list]
    else:
        matched = [[] for _ in row_list]
    # One validation of plain dicts in pydantic-core: faster than a constructor per candidate.
    return RetrievalResult.model_validate({
        "per_source": per_source, "resolved_tags": p.resolved, "candidates": [
        {"item_id": ids[r], "source": SOURCES[s], "score": sc, "nearest_history": nh,
         "matched_tags": mt}
        for r, s, sc, nh, mt in zip(row_list, source.tolist(), scores.tolist(), nearest, matched,
                                    strict=True)]})
