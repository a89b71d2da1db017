"""retrieve: candidates from every source (ANN, content, tags, popular) in one call."""

from __future__ import annotations

from typing import Any

from services.gateway.catalog import Catalog
from services.gateway.pipeline.context import RecContext, RecRequest
from services.gateway.pipeline.head import head_limit
from shared.contracts import (
    Candidate,
    RetrievalAPI,
    RetrievalQuery,
    Source,
    UserState,
    sources_only,
)
from shared.observability import CANDIDATES
from shared.sources import ranked_caps

PROFILE_TAGS = 10  # strongest tag-profile tags sent to the tag source


def query_tags(tag_profile: dict[str, float], interests: tuple[str, ...]) -> dict[str, float]:
    """The user's strongest tags scaled to at most 1, plus the request's interests at weight 1."""
    # ties by name: the same profile always sends the same tags (dict order follows hashing)
    top = sorted(tag_profile.items(), key=lambda kv: (-kv[1], kv[0]))[:PROFILE_TAGS]
    peak = top[0][1] if top and top[0][1] > 0 else 1.0
    tags = {tag: weight / peak for tag, weight in top if weight > 0}
    for tag in interests:
        tags[tag] = 1.0
    return tags


def retrieval_query(user: UserState, caps: dict[Source, int], interests: tuple[str, ...] = (),
                    exclude: frozenset[str] = frozenset()) -> RetrievalQuery:
    """What the gateway asks retrieval for a user: the history to search with, the tags to
    match, everything seen (and `exclude`) left out. The offline two-stage evaluation builds
    its queries here too, so it measures the candidates the service proposes."""
    return RetrievalQuery(history=user.history, tags=query_tags(user.tag_profile, interests),
                          exclude=list(set(user.seen).union(exclude)), caps=caps)


class Retrieve:
    name = "retrieve"

    def __init__(self, retrieval: RetrievalAPI, caps: dict[Source, int],
                 catalog: Catalog, bundle: str | None = None,
                 ranker_caps: dict[Source, int] | None = None, ranker: bool = True) -> None:
        self.retrieval = retrieval
        self.bundle = bundle  # a bundle served side by side (experiment arm); None: the main
        self.caps = caps
        # A candidate ranker's budget within the caps (None: the caps themselves)
        self.ranker_caps = ranked_caps(caps, caps if ranker_caps is None else ranker_caps)
        self.ranker = ranker  # False: an arm that keeps the retrieval order
        self.catalog = catalog  # for the fallback only
        # vidrec_candidates_total has no service label: an in-process retrieval service already
        # counts its candidates in this process's registry, a remote one only in its own.
        self.count_candidates = getattr(retrieval, "base_url", None) is not None

    def _excluded(self, ctx: RecContext) -> set[str]:
        return set(ctx.user.seen).union(ctx.request.exclude)

    def caps_for(self, request: RecRequest, has_history: bool) -> dict[Source, int]:
        """Candidates to ask of each source for this request.

        Tag filters may remove most of the list, and a user without a history has nothing to
        search with: those get every source, as configured (and so does a user whose history
        gave too few candidates, see `run`). Otherwise:

        - a bundle with a candidate ranker, which can prefer any source's candidate, gets the
          head of every source (`ranker_caps`, settings): every candidate costs the request
          its transfer, features and model run, and past that budget the ranker gains little
          (shared/sources.py RANKER_CAPS, bench/results/candidate_budget.json);
        - a bundle whose ranker is the tower scores an item by user_vec . item_vec, exactly
          what the ANN source searches (docs/bundle.md), and ANN returns the best items by that
          score among everything not excluded. So no candidate of another source can beat
          ANN's top `head` items, and nothing past them is looked at (items.py): only those
          are asked for, plus the tag source when the request names `interests` (they get
          reserved places, select.py). So is an experiment arm that keeps retrieval's order.
        """
        head = head_limit(request)
        if head is None or not has_history or not self.caps.get("ann"):
            return self.caps
        if self.ranker and self.catalog.candidate_ranker:
            return self.ranker_caps
        caps = self.caps
        return sources_only(ann=min(caps.get("ann", 0), head),
                            tags=caps.get("tags", 0) if request.interests else 0)

    async def run(self, ctx: RecContext) -> None:
        user = ctx.user
        caps = self.caps_for(ctx.request, bool(user.history))
        query = retrieval_query(user, caps, ctx.request.interests, ctx.request.exclude)
        (result,) = await self._retrieve(query)
        if len(result.candidates) < ctx.request.k and caps != self.caps:
            # Too few (none of the history is in the catalogue, say): every source, once more.
            (result,) = await self._retrieve(query.model_copy(update={"caps": self.caps}))
        resolved = result.resolved_tags  # absent: the interest is a cluster name itself
        ctx.interest_clusters = frozenset(
            c for i in ctx.request.interests for c in resolved.get(i, [i]))
        self._keep(ctx, result.candidates)
        ctx.per_source = dict(result.per_source)
        if self.count_candidates:
            for source, n in ctx.per_source.items():
                CANDIDATES.labels(source).inc(n)

    async def _retrieve(self, query: RetrievalQuery) -> list[Any]:
        if self.bundle is None:
            return await self.retrieval.retrieve([query])
        return await self.retrieval.retrieve([query], bundle=self.bundle)

    def fallback(self, ctx: RecContext) -> None:
        # Retrieval is down: the bundle's popular list (interest matches first) still answers.
        n = sum(self.caps.values()) or 100
        cands = self.catalog.popular_candidates(n, self._excluded(ctx), ctx.request.interests)
        ctx.interest_clusters = self.catalog.interest_clusters(ctx.request.interests)
        self._keep(ctx, cands)
        ctx.per_source = {"fallback": len(cands)}
        CANDIDATES.labels("fallback").inc(len(cands))

    @staticmethod
    def _keep(ctx: RecContext, candidates: list[Candidate]) -> None:
        # Sources may propose one item twice; the first (strongest source) wins.
        if len({c.item_id for c in candidates}) == len(candidates):  # the usual case
            ctx.candidates = candidates
            return
        seen: set[str] = set()
        kept = []
        for c in candidates:
            if c.item_id not in seen:
                seen.add(c.item_id)
                kept.append(c)
        ctx.candidates = kept
