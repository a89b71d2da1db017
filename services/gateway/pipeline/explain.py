"""explain: why each item is in the list, in words a viewer can read. Tag reasons name the
tag cluster (`matches #king glory` for an item tagged `kingglory`)."""

from __future__ import annotations

from services.gateway.pipeline.context import Pick, RecContext
from shared.contracts import Candidate

MAX_TAG_REASONS = 2


def watched_reason(ctx: RecContext, c: Candidate) -> str | None:
    """The watched item that explains `c`: the candidate ranker's own reason (the history item
    it attended to most), else retrieval's nearest watched item (items.py fetches only these)."""
    return ctx.attended.get(c.item_id) or c.nearest_history


def reasons_for(pick: Pick, ctx: RecContext, profile_tags: set[str]) -> list[str]:
    c = pick.candidate
    reasons: list[str] = []
    because = watched_reason(ctx, c)
    if because:
        watched = ctx.meta.get(because)
        if watched is not None and watched.title:
            reasons.append(f"because you watched {watched.title}")
    tags = list(c.matched_tags)
    if not tags:  # retrieval did not say; the item's clusters the user or request cares about
        tags = [t for t in pick.meta.tag_keys if t in profile_tags]
    interests = ctx.interests
    if interests:  # what the request asked for comes first
        tags.sort(key=lambda t: t not in interests)
    reasons.extend(f"matches #{t}" for t in tags[:MAX_TAG_REASONS])
    if c.source == "popular":
        reasons.append("popular now")
    elif c.source == "cooc":  # proposed for what people watched after the user's latest items
        reasons.append("often watched next")
    if not reasons:
        reasons.append("similar to what you watch" if c.source in ("ann", "content")
                       else "recommended for you")
    return reasons


class Explain:
    name = "explain"

    async def run(self, ctx: RecContext) -> None:
        # tag clusters the user likes: a dislike pushes a weight below zero (feature store)
        liked = {t for t, w in ctx.user.tag_profile.items() if w > 0}
        profile = liked.union(ctx.interests)
        for pick in ctx.picks:
            pick.reasons = reasons_for(pick, ctx, profile)
