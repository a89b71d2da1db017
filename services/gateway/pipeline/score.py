"""score: the ranker gives every candidate a score, in the same order (the sort step orders
them, order.py).

The ranker is told which source proposed each candidate and that source's score (the candidate
ranker's source features). A bundle without a candidate ranker answers with the retrieval
tower's score (`ranker: "tower"`): the answer is still ranked, and `degraded` says "ranker".
The candidate ranker also names, per candidate, the history item it attended to most: the
explanation uses it (explain.py).
"""

from __future__ import annotations

from services.gateway.pipeline.context import RecContext
from services.gateway.pipeline.stage import ScoreMismatch
from shared.contracts import RankingAPI, ScoreItem


class Score:
    name = "score"

    def __init__(self, ranking: RankingAPI, model_version: str = "",
                 bundle: str | None = None, enabled: bool = True) -> None:
        self.ranking = ranking
        self.model_version = model_version  # last version the ranker reported
        self.bundle = bundle  # a bundle served side by side (experiment arm); None: the main
        self.enabled = enabled  # False: an experiment arm without the ranker

    async def run(self, ctx: RecContext) -> None:
        history = ctx.user.history
        ids = [c.item_id for c in ctx.candidates]
        if not history or not ids or not self.enabled:
            # Nothing to personalise on (a new user): keep the retrieval order, not a failure.
            self._keep_retrieval_order(ctx)
            return
        cands = ctx.candidates
        batch = [ScoreItem(history=history, candidates=ids, sources=[c.source for c in cands],
                           source_scores=[c.score for c in cands])]
        answer = await (self.ranking.score_detailed(batch) if self.bundle is None
                        else self.ranking.score_detailed(batch, bundle=self.bundle))
        scores, version = answer.scores, answer.model_version
        if len(scores) != 1 or len(scores[0]) != len(ids):
            got = len(scores[0]) if len(scores) == 1 else f"{len(scores)} lists of"
            raise ScoreMismatch(f"ranker returned {got} scores for {len(ids)} candidates")
        ctx.scores = dict(zip(ids, scores[0], strict=True))
        if answer.attended:
            ctx.attended = {i: a for i, a in zip(ids, answer.attended[0], strict=False) if a}
        if answer.ranker == "tower":
            ctx.degraded.append("ranker")  # the bundle has no candidate ranker
        ctx.ranked = True
        ctx.model_version = self.model_version = version

    def fallback(self, ctx: RecContext) -> None:
        self._keep_retrieval_order(ctx)

    def _keep_retrieval_order(self, ctx: RecContext) -> None:
        ctx.scores = {c.item_id: c.score for c in ctx.candidates}
        ctx.ranked = False
        ctx.model_version = self.model_version
