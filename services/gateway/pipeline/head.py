"""head: the ranked list cut to the part the answer can use.

The answer is k items, and looking up metadata for every candidate (hundreds) would cost more
than the rest of the request, so only the head of the list goes on: the best HEAD_PER_K * k
(3k with `interests`; at least MIN_HEAD), plus the best few matching the request's `interests`
behind it (they may take reserved places, select.py). With tag filters in the request nothing
is cut, since those filters may remove most of the list. Retrieval reads the same policy
(retrieve.py: a user with a history is only asked for what can reach the head).

With the catalogue's tags, the best items behind the head that select's diversity cap would
pick are kept too: a ranker that puts one taste's items first (tag affinity is one of the
candidate ranker's features) must not leave select nothing but one cluster to choose from.
"""

from __future__ import annotations

from collections import Counter

from services.gateway.catalog import Catalog
from services.gateway.pipeline.context import RecContext, RecRequest
from shared.contracts import Candidate

# 2k: since diverse_picks keeps what select's diversity cap needs from behind the head, the head
# only covers items dropped later (unavailable ones); 2k and 3k gave the same answers to 2,000
# of 2,000 MicroLens users at k=20 and 1,000 of 1,000 at k=50, for ~5% less CPU a request (a
# third fewer items looked up). With `interests` the reserved places draw on the head: 2k
# changed 95 of 1,000 such lists, so those keep 3k.
HEAD_PER_K = 2
HEAD_PER_K_WITH_INTERESTS = 3
MIN_HEAD = 30


def head_limit(request: RecRequest) -> int | None:
    """How many of the best candidates are looked at; None: all of them."""
    if request.include_tags or request.exclude_tags:
        return None
    per_k = HEAD_PER_K_WITH_INTERESTS if request.interests else HEAD_PER_K
    return max(per_k * request.k, MIN_HEAD)


def interest_quota(request: RecRequest) -> int:
    """Places kept for items matching `interests` (a quarter of the list)."""
    return max(1, request.k // 4) if request.interests else 0


def matches_interests(candidate: Candidate, interests: frozenset[str]) -> bool:
    """`interests`: the clusters the request's interests resolved to."""
    return bool(interests) and any(t in interests for t in candidate.matched_tags)


def keep_head(ctx: RecContext, catalog: Catalog | None = None, max_per_tag: int = 0) -> None:
    """Candidates (best first) cut to the head, plus the best interest matches behind it, plus
    (with a catalogue) the items select's diversity cap would pick behind it."""
    limit = head_limit(ctx.request)
    cands = ctx.candidates
    if limit is None or len(cands) <= limit:
        return
    head, rest = cands[:limit], cands[limit:]
    quota = interest_quota(ctx.request)
    if quota:
        interests = ctx.interests
        head += [c for c in rest if matches_interests(c, interests)][:2 * quota]
    if catalog is not None and max_per_tag > 0:
        taken = {c.item_id for c in head}
        head += [c for c in diverse_picks(cands, ctx.request.k, max_per_tag, catalog)
                 if c.item_id not in taken]
    ctx.candidates = head


def diverse_picks(ranked: list[Candidate], k: int, max_per_tag: int,
                  catalog: Catalog) -> list[Candidate]:
    """The first k items, best first, with no tag cluster more than max_per_tag times (the
    bundle's tags; an item the catalogue does not know counts as untagged)."""
    per_tag: Counter[str] = Counter()
    chosen: list[Candidate] = []
    tag_keys = catalog.tag_keys
    for c in ranked:
        if len(chosen) == k:
            break
        keys = tag_keys(c.item_id)
        if any(per_tag[t] >= max_per_tag for t in keys):
            continue
        chosen.append(c)
        per_tag.update(keys)
    return chosen


class CutToHead:
    """Pure: no dependency, no fallback."""

    name = "head"

    def __init__(self, catalog: Catalog | None = None, max_per_tag: int = 0) -> None:
        self.catalog = catalog
        self.max_per_tag = max_per_tag  # select's diversity cap (settings.max_per_tag)

    async def run(self, ctx: RecContext) -> None:
        keep_head(ctx, self.catalog, self.max_per_tag)
