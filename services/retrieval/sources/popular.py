"""popular: the bundle's popularity order (what a new user gets)."""

from __future__ import annotations

import numpy as np

from services.retrieval.sources.base import NOTHING, Found, Prepared
from services.retrieval.state import RetrievalState
from shared.contracts import Source


def most_popular(state: RetrievalState, cap: int, blocked: np.ndarray, n_blocked: int) -> Found:
    """The `cap` most popular rows that are not blocked."""
    if cap <= 0:
        return NOTHING
    head = state.popular_rows[:cap + n_blocked]
    head = head[~blocked[head]][:cap]
    return head, state.popularity.view[head]


class PopularSource:
    name: Source = "popular"

    def search(self, state: RetrievalState, batch: list[Prepared]) -> list[Found]:
        return [most_popular(state, p.caps[self.name], p.blocked, p.n_blocked) for p in batch]


SOURCE = PopularSource()
