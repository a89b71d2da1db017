"""select: keep any one tag from dominating the list, take the top k (candidates arrive best
first: ranked by score, or in retrieval order when the ranker could not answer)."""

from __future__ import annotations

from collections import Counter

from services.gateway.pipeline.context import Pick, RecContext
from shared.contracts import Candidate, ItemMeta


def diversify(ranked: list[tuple[Candidate, ItemMeta]], k: int, max_per_tag: int,
              exempt: frozenset[str] = frozenset()) -> list[tuple[Candidate, ItemMeta]]:
    """Best-first, at most `max_per_tag` items per tag among the first k; items held back by a
    full tag fill the remaining places (best first) only when nothing else is left. Tags the
    request asked for (`exempt`) are not capped: the viewer wants many of those."""
    if max_per_tag <= 0:
        return ranked[:k]
    per_tag: Counter[str] = Counter()
    chosen: list[tuple[Candidate, ItemMeta]] = []
    held_back: list[tuple[Candidate, ItemMeta]] = []
    for pair in ranked:
        if len(chosen) == k:
            break
        tags = [t for t in pair[1].tags if t not in exempt] if exempt else pair[1].tags
        if any(per_tag[t] >= max_per_tag for t in tags):
            held_back.append(pair)
            continue
        chosen.append(pair)
        per_tag.update(tags)
    if len(chosen) < k:
        chosen.extend(held_back[: k - len(chosen)])
    return chosen


class Select:
    name = "select"

    def __init__(self, max_per_tag: int) -> None:
        self.max_per_tag = max_per_tag

    async def run(self, ctx: RecContext) -> None:
        meta, scores = ctx.meta, ctx.scores
        pairs = [(c, meta[c.item_id]) for c in ctx.candidates if c.item_id in meta]
        asked = ctx.request.include_tags.union(ctx.request.interests)
        chosen = diversify(pairs, ctx.request.k, self.max_per_tag, asked)
        ctx.picks = [Pick(c, m, float(scores.get(c.item_id, c.score))) for c, m in chosen]

    def fallback(self, ctx: RecContext) -> None:  # pure: cannot fail on a dependency
        pass
