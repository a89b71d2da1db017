"""filter: drop candidates the user must not get. Each filter returns what it kept and what it
removed; the stage counts removals per filter (vidrec_filtered_total) and keeps them on the
context for debugging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from services.gateway.pipeline.context import RecContext
from shared.contracts import Candidate
from shared.observability import FILTERED

Split = tuple[list[Candidate], list[Candidate]]  # (kept, removed)


class Filter(Protocol):
    name: str

    def apply(self, ctx: RecContext, candidates: list[Candidate]) -> Split: ...


def _split(candidates: list[Candidate], drop: Callable[[Candidate], bool]) -> Split:
    kept: list[Candidate] = []
    removed: list[Candidate] = []
    for c in candidates:
        (removed if drop(c) else kept).append(c)
    return kept, removed


def _split_ids(candidates: list[Candidate], drop_ids: set[str] | frozenset[str]) -> Split:
    """The common case, without a Python call per candidate."""
    if not drop_ids:
        return candidates, []
    kept = [c for c in candidates if c.item_id not in drop_ids]
    if len(kept) == len(candidates):
        return kept, []
    return kept, [c for c in candidates if c.item_id in drop_ids]


class SeenFilter:
    """Items the user has already watched."""

    name = "seen"

    def apply(self, ctx: RecContext, candidates: list[Candidate]) -> Split:
        return _split_ids(candidates, set(ctx.user.seen))


class ExcludedIdsFilter:
    """Items the request asked to leave out (`exclude=`)."""

    name = "excluded"

    def apply(self, ctx: RecContext, candidates: list[Candidate]) -> Split:
        return _split_ids(candidates, ctx.request.exclude)


class UnavailableFilter:
    """Items deleted or marked unavailable, and items nobody has metadata for."""

    name = "unavailable"

    def apply(self, ctx: RecContext, candidates: list[Candidate]) -> Split:
        meta = ctx.meta

        def drop(c: Candidate) -> bool:
            m = meta.get(c.item_id)
            return m is None or not m.available

        return _split(candidates, drop)


class IncludeTagsFilter:
    """With `include_tags=`, only items carrying at least one of them."""

    name = "include_tags"

    def apply(self, ctx: RecContext, candidates: list[Candidate]) -> Split:
        wanted = ctx.request.include_tags
        if not wanted:
            return candidates, []
        meta = ctx.meta
        return _split(candidates, lambda c: c.item_id not in meta
                      or wanted.isdisjoint(meta[c.item_id].tags))


class ExcludeTagsFilter:
    """With `exclude_tags=`, no item carrying any of them."""

    name = "exclude_tags"

    def apply(self, ctx: RecContext, candidates: list[Candidate]) -> Split:
        unwanted = ctx.request.exclude_tags
        if not unwanted:
            return candidates, []
        meta = ctx.meta
        return _split(candidates, lambda c: c.item_id in meta
                      and not unwanted.isdisjoint(meta[c.item_id].tags))


class FilterStage:
    """Runs filters in order over the candidates. Filters are pure: they cannot fail."""

    def __init__(self, name: str, filters: list[Filter]) -> None:
        self.name = name
        self.filters = filters
        self._counters = {f.name: FILTERED.labels(f.name) for f in filters}

    async def run(self, ctx: RecContext) -> None:
        candidates = ctx.candidates
        for f in self.filters:
            candidates, removed = f.apply(ctx, candidates)
            if removed:
                ctx.removed[f.name] = ctx.removed.get(f.name, 0) + len(removed)
                self._counters[f.name].inc(len(removed))
        ctx.candidates = candidates
