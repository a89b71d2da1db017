"""cooc: what other people watched right after the user's newest items (shared/transitions.py:
transition counts over the sequences the bundle was built from, the newest items weighing
most). The learned vector sums a history up in one direction; this reads the transitions
themselves, so it finds the next episode or the usual follow-up the vector's neighbours miss.

A bundle without a transitions file (built before them) proposes nothing here. Items upserted
while serving have no transitions yet: they neither propose nor get proposed until a bundle is
built with their events; a re-upserted item is proposed under its current row.
"""

from __future__ import annotations

import numpy as np

from services.retrieval.sources.base import NOTHING, Found, Prepared
from services.retrieval.state import RetrievalState
from shared.bundle import FIRST_ITEM_INDEX
from shared.contracts import Source
from shared.transitions import best_first


def current_rows(state: RetrievalState, bundle_rows: np.ndarray) -> np.ndarray:
    """Bundle rows -> the rows serving holds for those items now (a replaced item's newest)."""
    rows = bundle_rows.astype(np.int64)
    replaced = np.flatnonzero(state.dead.view[rows])
    if len(replaced):
        ids, row_of = state.item_ids, state.row_of
        rows[replaced] = [row_of[ids[r]] for r in rows[replaced].tolist()]
    return rows


class CoocSource:
    name: Source = "cooc"

    def search(self, state: RetrievalState, batch: list[Prepared]) -> list[Found]:
        table = state.transitions
        found: list[Found] = [NOTHING] * len(batch)
        if table is None:
            return found
        # a history row's bundle row: its model index less the offset (-1: new since the build)
        model_index = state.model_index.view
        popularity = state.popularity.view
        for i, p in enumerate(batch):
            cap = p.caps[self.name]
            if cap <= 0 or not len(p.hist_rows):
                continue
            rows, scores = table.after(model_index[p.hist_rows] - FIRST_ITEM_INDEX)
            if not len(rows):
                continue
            rows = current_rows(state, rows)
            keep = ~p.blocked[rows]
            rows, scores = rows[keep], scores[keep]
            top = best_first(rows, scores, cap, popularity)
            found[i] = (rows[top], scores[top])
        return found


SOURCE = CoocSource()
