"""items: title, tags and availability of the best candidates (and of the watched items that
explain them), in one feature-store call.

Only the head of the ranked list is looked up: the answer is k items, and fetching metadata
for every candidate (hundreds) would cost more than the rest of the request. Candidates past
the head are dropped here, except the best few matching the request's `interests` (they may
take reserved places, select.py). With tag filters in the request the whole list is looked up,
since those may remove most of it.
"""

from __future__ import annotations

from collections import Counter

from services.gateway.catalog import Catalog
from services.gateway.pipeline.context import RecContext, RecRequest
from shared.contracts import Candidate, FeatureStoreAPI

HEAD_PER_K = 3  # 3k: diversity reached past rank 3k in <1% of MicroLens requests
MIN_HEAD = 30


def head_limit(request: RecRequest) -> int | None:
    """How many of the best candidates are looked at; None: all of them."""
    if request.include_tags or request.exclude_tags:
        return None
    return max(HEAD_PER_K * request.k, MIN_HEAD)


def interest_quota(request: RecRequest) -> int:
    """Places kept for items matching `interests` (a quarter of the list)."""
    return max(1, request.k // 4) if request.interests else 0


def matches_interests(candidate: Candidate, interests: frozenset[str]) -> bool:
    """`interests`: the clusters the request's interests resolved to."""
    return bool(interests) and any(t in interests for t in candidate.matched_tags)


def keep_head(ctx: RecContext, catalog: Catalog | None = None, max_per_tag: int = 0) -> None:
    """Candidates (best first) cut to the head, plus the best interest matches behind it,
    plus (with the catalog's tags) the best items behind it that the diversity cap of select
    would pick: a ranker that puts one taste's items first (tag affinity is one of the
    candidate ranker's features) must not leave select nothing but one cluster to choose from."""
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
    bundle's tags; an item the catalog does not know counts as untagged)."""
    per_tag: Counter[str] = Counter()
    chosen: list[Candidate] = []
    meta = catalog.meta
    for c in ranked:
        if len(chosen) == k:
            break
        item = meta.get(c.item_id)
        keys = item.tag_keys if item is not None else []
        if any(per_tag[t] >= max_per_tag for t in keys):
            continue
        chosen.append(c)
        per_tag.update(keys)
    return chosen


def wanted_ids(ctx: RecContext) -> list[str]:
    ids = dict.fromkeys(c.item_id for c in ctx.candidates)
    ids.update(dict.fromkeys(c.nearest_history for c in ctx.candidates if c.nearest_history))
    ids.update(dict.fromkeys(ctx.attended[c.item_id] for c in ctx.candidates
                             if c.item_id in ctx.attended))
    return list(ids)


class ItemMetaStage:
    name = "items"

    def __init__(self, feature_store: FeatureStoreAPI, catalog: Catalog,
                 max_per_tag: int = 0) -> None:
        self.feature_store = feature_store
        self.catalog = catalog
        self.max_per_tag = max_per_tag  # select's diversity cap (settings.max_per_tag)

    async def run(self, ctx: RecContext) -> None:
        keep_head(ctx, self.catalog, self.max_per_tag)
        ids = wanted_ids(ctx)
        found = dict(await self.feature_store.item_meta(ids)) if ids else {}
        # Items the store does not know (e.g. upserted through this gateway while the store
        # was down) are looked up in the gateway's catalog.
        known = self.catalog.meta
        for item_id in ids:
            if item_id not in found and item_id in known:
                found[item_id] = known[item_id]
        ctx.meta = found

    def fallback(self, ctx: RecContext) -> None:
        keep_head(ctx, self.catalog, self.max_per_tag)
        known = self.catalog.meta
        ctx.meta = {i: known[i] for i in wanted_ids(ctx) if i in known}
