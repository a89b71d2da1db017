"""tags: items in the clusters of the query's weighted tags (inverted index), those matching the
most query weight first, then the matched clusters taking turns (each one's most popular first),
popularity breaking the remaining ties. A query tag the bundle does not know is
embedded and matched to the nearest clusters (shared/tags.py), so an interest "football" finds
`soccer`."""

from __future__ import annotations

import numpy as np

from services.retrieval.sources.base import NOTHING, Found, Prepared
from services.retrieval.state import RetrievalState
from shared.contracts import Source

MAX_QUERY_TAGS = 20   # strongest query tags the tag source looks up
# Clusters take turns among equal scores (tag_matches); False: popularity alone breaks the ties,
# the order before (kept so that bench/tags.py can measure both in one run).
TAKE_TURNS = True


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


def tag_matches(state: RetrievalState, p: Prepared) -> Found:
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
    cap = p.caps[TagSource.name]
    top = sorted(((w, t) for t, w in p.tags.items() if w > 0 and t in state.tag_rows),
                 reverse=True)[:MAX_QUERY_TAGS]
    if cap <= 0 or not top:
        return NOTHING
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


class TagSource:
    name: Source = "tags"

    def search(self, state: RetrievalState, batch: list[Prepared]) -> list[Found]:
        return [tag_matches(state, p) for p in batch]


SOURCE = TagSource()
