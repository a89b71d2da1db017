"""select: keep any one tag cluster from dominating the list (`king glory` and `kingglory`
count as one), keep places for the request's `interests`, take the top k (candidates arrive
best first: ranked by score, or in retrieval order when the ranker could not answer). Without
tag clusters in the bundle every tag is its own cluster."""

from __future__ import annotations

from collections import Counter

from services.gateway.pipeline.context import Pick, RecContext
from services.gateway.pipeline.head import interest_quota
from shared.contracts import Candidate, ItemMeta
from shared.tags import TagClusters

Pair = tuple[Candidate, ItemMeta]


def diversify(ranked: list[Pair], k: int, max_per_tag: int,
              exempt: frozenset[str] = frozenset()) -> list[Pair]:
    """Best-first, at most `max_per_tag` items per tag cluster among the first k; items held
    back by a full cluster fill the remaining places (best first) only when nothing else is
    left. Clusters the request asked for (`exempt`) are not capped: the viewer wants many."""
    if max_per_tag <= 0:
        return ranked[:k]
    per_tag: Counter[str] = Counter()
    chosen: list[Pair] = []
    held_back: list[Pair] = []
    for pair in ranked:
        if len(chosen) == k:
            break
        keys = pair[1].tag_keys
        tags = [t for t in keys if t not in exempt] if exempt else keys
        if any(per_tag[t] >= max_per_tag for t in tags):
            held_back.append(pair)
            continue
        chosen.append(pair)
        per_tag.update(tags)
    if len(chosen) < k:
        chosen.extend(held_back[: k - len(chosen)])
    return chosen


def reserve(chosen: list[Pair], ranked: list[Pair], k: int, quota: int,
            interests: frozenset[str]) -> list[Pair]:
    """At least `quota` of the k items are in one of the `interests` clusters, when there are
    that many: the best such items replace the lowest-ranked others. The list stays in rank
    order."""
    def wanted(pair: Pair) -> bool:
        return not interests.isdisjoint(pair[1].tag_keys)

    missing = quota - sum(map(wanted, chosen))
    if missing <= 0:
        return chosen
    taken = {c.item_id for c, _ in chosen}
    extra = [p for p in ranked if wanted(p) and p[0].item_id not in taken][:missing]
    drop = max(0, len(chosen) + len(extra) - k)
    kept = list(chosen)
    for i in range(len(kept) - 1, -1, -1):
        if drop == 0:
            break
        if not wanted(kept[i]):
            del kept[i]
            drop -= 1
    rank = {p[0].item_id: i for i, p in enumerate(ranked)}
    return sorted(kept + extra, key=lambda p: rank[p[0].item_id])


class Select:
    name = "select"

    def __init__(self, max_per_tag: int, tag_clusters: TagClusters | None = None) -> None:
        self.max_per_tag = max_per_tag
        self.tag_clusters = tag_clusters or TagClusters.identity()

    async def run(self, ctx: RecContext) -> None:
        meta, scores = ctx.meta, ctx.scores
        pairs = [(c, meta[c.item_id]) for c in ctx.candidates if c.item_id in meta]
        request = ctx.request
        interests = ctx.interests
        asked = frozenset(self.tag_clusters.name(t) for t in request.include_tags)
        chosen = diversify(pairs, request.k, self.max_per_tag, asked.union(interests))
        chosen = reserve(chosen, pairs, request.k, interest_quota(request), interests)
        ctx.picks = [Pick(c, m, float(scores.get(c.item_id, c.score))) for c, m in chosen]
