"""sort: candidates best first by the ranker's scores. When the ranker did not score (a new
user, an arm without the ranker, the ranker down) the retrieval order stays: its sources'
scores are on different scales, and the union already lists the strongest source first."""

from __future__ import annotations

import numpy as np

from services.gateway.pipeline.context import RecContext


class SortByScore:
    """Pure: no dependency, no fallback."""

    name = "sort"

    async def run(self, ctx: RecContext) -> None:
        if not ctx.ranked:
            return
        cands, scores = ctx.candidates, ctx.scores
        row = np.fromiter((scores[c.item_id] for c in cands), np.float64, count=len(cands))
        ctx.candidates = [cands[i] for i in np.argsort(-row, kind="stable").tolist()]
