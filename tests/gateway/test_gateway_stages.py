"""Unit tests of the request-path stages that need no dependency: filters, diversity, explain,
and the per-stage failure policy."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.catalog import Catalog
from services.gateway.pipeline.context import Pick, RecContext, RecRequest
from services.gateway.pipeline.explain import Explain
from services.gateway.pipeline.filters import (
    ExcludedIdsFilter,
    ExcludeTagsFilter,
    FilterStage,
    IncludeTagsFilter,
    SeenFilter,
    UnavailableFilter,
)
from services.gateway.pipeline.head import CutToHead, keep_head
from services.gateway.pipeline.items import ItemMetaStage, wanted_ids
from services.gateway.pipeline.order import SortByScore
from services.gateway.pipeline.retrieve import Retrieve, query_tags
from services.gateway.pipeline.score import Score
from services.gateway.pipeline.select import Select, diversify, reserve
from services.gateway.pipeline.stage import Pipeline, ScoreMismatch, Step
from shared.contracts import (
    Candidate,
    ItemMeta,
    ScoreItem,
    ScoreResponse,
    UserState,
    sources_only,
)
from shared.observability import DEGRADED, FILTERED


def cand(item_id: str, source: str = "ann", score: float = 0.0, **kw) -> Candidate:
    return Candidate(item_id=item_id, source=source, score=score, **kw)


def meta(item_id: str, tags: list[str] = (), title: str | None = None,
         available: bool = True) -> ItemMeta:
    return ItemMeta(item_id=item_id, title=title or f"title {item_id}", tags=list(tags),
                    available=available)


def run(coro):
    return asyncio.run(coro)


# ---- filters ------------------------------------------------------------------------------
def test_filters_report_what_they_removed() -> None:
    ctx = RecContext(RecRequest("u", exclude=frozenset({"b"}),
                                include_tags=frozenset({"cats", "dogs"}),
                                exclude_tags=frozenset({"spam"})),
                     user_state=UserState(user_id="u", known=True, seen=["a"]))
    ctx.candidates = [cand(i) for i in "abcdefg"]
    ctx.meta = {"a": meta("a", ["cats"]), "b": meta("b", ["cats"]), "c": meta("c", ["cats"]),
                "d": meta("d", ["cats"], available=False), "e": meta("e", ["birds"]),
                "f": meta("f", ["dogs", "spam"])}  # g: nobody has metadata for it
    before = FILTERED.labels("seen")._value.get()
    run(FilterStage("prefilter", [SeenFilter(), ExcludedIdsFilter()]).run(ctx))
    run(FilterStage("filter", [UnavailableFilter(), IncludeTagsFilter(),
                               ExcludeTagsFilter()]).run(ctx))
    assert [c.item_id for c in ctx.candidates] == ["c"]
    assert ctx.removed == {"seen": 1, "excluded": 1, "unavailable": 2, "include_tags": 1,
                           "exclude_tags": 1}
    assert FILTERED.labels("seen")._value.get() == before + 1


def test_a_filter_splits_into_kept_and_removed() -> None:
    ctx = RecContext(RecRequest("u", exclude_tags=frozenset({"x"})))
    ctx.meta = {"a": meta("a", ["x"]), "b": meta("b", ["y"])}
    kept, removed = ExcludeTagsFilter().apply(ctx, [cand("a"), cand("b")])
    assert [c.item_id for c in kept] == ["b"]
    assert [c.item_id for c in removed] == ["a"]


# ---- select ---------------------------------------------------------------------------------
def pairs(spec: list[tuple[str, list[str]]]) -> list[tuple[Candidate, ItemMeta]]:
    return [(cand(i), meta(i, tags)) for i, tags in spec]


def test_diversify_caps_items_per_tag() -> None:
    ranked = pairs([("a1", ["a"]), ("a2", ["a"]), ("a3", ["a"]), ("b1", ["b"]), ("a4", ["a"]),
                    ("c1", ["c", "a"]), ("b2", ["b"])])
    chosen = [c.item_id for c, _ in diversify(ranked, k=4, max_per_tag=2)]
    assert chosen == ["a1", "a2", "b1", "b2"]


def test_diversify_relaxes_only_when_items_run_out() -> None:
    ranked = pairs([("a1", ["a"]), ("a2", ["a"]), ("a3", ["a"]), ("b1", ["b"]), ("a4", ["a"])])
    chosen = [c.item_id for c, _ in diversify(ranked, k=4, max_per_tag=2)]
    # b1 is the only other item; then the best held-back items fill the list in score order
    assert chosen == ["a1", "a2", "b1", "a3"]


def test_select_keeps_the_order_it_is_given_and_reports_scores() -> None:
    ctx = RecContext(RecRequest("u", k=2))
    ctx.candidates = [cand("y", score=8), cand("z", score=7), cand("x", score=9)]
    ctx.meta = {i: meta(i) for i in "xyz"}
    ctx.scores, ctx.ranked = {"x": 0.1, "y": 0.9, "z": 0.5}, True
    run(Select(max_per_tag=3).run(ctx))
    assert [(p.candidate.item_id, p.score) for p in ctx.picks] == [("y", 0.9), ("z", 0.5)]


def test_the_head_step_then_items_fallback_looks_up_the_head_in_the_catalog() -> None:
    cat = Catalog(version="v", meta={f"i{n}": meta(f"i{n}") for n in range(100)})
    ctx = RecContext(RecRequest("u", k=5))
    ctx.candidates = [cand(f"i{n}", nearest_history="i99" if n == 0 else None)
                      for n in range(90)]
    run(CutToHead().run(ctx))
    ItemMetaStage(feature_store=None, catalog=cat).fallback(ctx)  # type: ignore[arg-type]
    assert len(ctx.candidates) == 30  # max(2k, 30)
    assert set(ctx.meta) == {f"i{n}" for n in range(30)} | {"i99"}
    ctx = RecContext(RecRequest("u", k=5, exclude_tags=frozenset({"x"})))
    ctx.candidates = [cand(f"i{n}") for n in range(90)]
    run(CutToHead().run(ctx))
    ItemMetaStage(feature_store=None, catalog=cat).fallback(ctx)  # type: ignore[arg-type]
    assert len(ctx.candidates) == 90  # tag filters may remove most: keep them all


def test_items_fetches_one_watched_item_per_candidate_the_rankers_when_it_gave_one() -> None:
    ctx = RecContext(RecRequest("u", k=5))
    ctx.candidates = [cand("a", nearest_history="n1"), cand("b", nearest_history="n2"),
                      cand("c")]
    ctx.attended = {"a": "w1", "c": "w3"}  # the candidate ranker's reasons win (explain.py)
    assert wanted_ids(ctx) == ["a", "b", "c", "w1", "n2", "w3"]


# ---- explain --------------------------------------------------------------------------------
def test_explain_gives_readable_reasons() -> None:
    ctx = RecContext(RecRequest("u", interests=("music",)),
                     user_state=UserState(user_id="u", known=True, tag_profile={"cats": 2.0}))
    ctx.meta = {"w": meta("w", title="Cat video one")}
    ctx.picks = [
        Pick(cand("a", nearest_history="w"), meta("a", ["cats"]), 1.0),
        Pick(cand("b", source="tags", matched_tags=["music"]), meta("b", ["music"]), 1.0),
        Pick(cand("c", source="popular"), meta("c", ["news"]), 1.0),
        Pick(cand("d", source="content"), meta("d", ["cats", "dogs"]), 1.0),
        Pick(cand("e", source="ann"), meta("e", []), 1.0),
        Pick(cand("f", source="cooc", nearest_history="w"), meta("f", []), 1.0),
    ]
    run(Explain().run(ctx))
    assert ctx.picks[0].reasons == ["because you watched Cat video one", "matches #cats"]
    assert ctx.picks[1].reasons == ["matches #music"]
    assert ctx.picks[2].reasons == ["popular now"]
    assert ctx.picks[3].reasons == ["matches #cats"]
    assert ctx.picks[4].reasons == ["similar to what you watch"]
    assert ctx.picks[5].reasons == ["because you watched Cat video one", "often watched next"]


def test_explain_names_the_history_item_the_ranker_attended_to() -> None:
    ctx = RecContext(RecRequest("u"), user_state=UserState(user_id="u", known=True))
    ctx.meta = {"w": meta("w", title="Nearest by vectors"), "v": meta("v", title="Attended")}
    ctx.attended = {"a": "v"}  # the candidate ranker's most-attended watched item for "a"
    ctx.picks = [Pick(cand("a", nearest_history="w"), meta("a"), 1.0),
                 Pick(cand("b", nearest_history="w"), meta("b"), 1.0)]
    run(Explain().run(ctx))
    assert ctx.picks[0].reasons == ["because you watched Attended"]
    assert ctx.picks[1].reasons == ["because you watched Nearest by vectors"]


def test_items_keep_what_diversity_needs_past_the_head() -> None:
    # a ranker that puts one cluster first: 40 "drama" items, then 10 others
    cands = [cand(f"d{i}") for i in range(40)] + [cand(f"o{i}") for i in range(10)]
    cat = Catalog(version="v", meta={**{f"d{i}": meta(f"d{i}", ["drama"]) for i in range(40)},
                                     **{f"o{i}": meta(f"o{i}", [f"t{i}"]) for i in range(10)}})
    ctx = RecContext(RecRequest("u", k=5), candidates=list(cands))
    keep_head(ctx, cat, max_per_tag=3)
    kept = [c.item_id for c in ctx.candidates]
    assert kept[:30] == [f"d{i}" for i in range(30)] and kept[30:] == ["o0", "o1"]


def test_query_tags_scales_profile_and_adds_interests() -> None:
    tags = query_tags({"a": 4.0, "b": 2.0, "z": 0.0}, ("new",))
    assert tags == {"a": 1.0, "b": 0.5, "new": 1.0}


# ---- failure policy -------------------------------------------------------------------------
class SlowStage:
    name = "slow"

    def __init__(self) -> None:
        self.fell_back = False

    async def run(self, ctx: RecContext) -> None:
        await asyncio.sleep(1.0)

    def fallback(self, ctx: RecContext) -> None:
        self.fell_back = True


def test_a_stage_past_its_timeout_falls_back_and_is_flagged() -> None:
    stage = SlowStage()
    before = DEGRADED.labels("gateway", "slow")._value.get()
    ctx = run(Pipeline([Step(stage, timeout_s=0.01)]).run(RecContext(RecRequest("u"))))
    assert stage.fell_back
    assert ctx.degraded == ["slow"]
    assert DEGRADED.labels("gateway", "slow")._value.get() == before + 1


def test_a_fail_closed_stage_raises() -> None:
    with pytest.raises(TimeoutError):
        run(Pipeline([Step(SlowStage(), timeout_s=0.01, fail_open=False)])
            .run(RecContext(RecRequest("u"))))


class WrongLengthRanker:
    """A ranker that answers with one score too few (the failure the typed check exists for)."""

    async def score(self, requests: list[ScoreItem]) -> tuple[list[list[float]], str]:
        return [[0.5] * (len(requests[0].candidates) - 1)], "v-test"

    async def score_detailed(self, requests: list[ScoreItem]) -> ScoreResponse:
        scores, version = await self.score(requests)
        return ScoreResponse(scores=scores, model_version=version, ranker="candidate")

    async def ready(self) -> bool:
        return True


def test_a_score_count_mismatch_is_typed_and_degrades_to_retrieval_order() -> None:
    ctx = RecContext(RecRequest("u"), user_state=UserState(user_id="u", known=True, history=["h"]))
    ctx.candidates = [cand("a", score=3.0), cand("b", score=2.0)]
    stage = Score(WrongLengthRanker(), model_version="v-old")
    with pytest.raises(ScoreMismatch):
        run(stage.run(ctx))
    run(Pipeline([Step(stage), Step(SortByScore(), fail_open=False)]).run(ctx))
    assert ctx.degraded == ["score"]
    assert not ctx.ranked and ctx.scores == {"a": 3.0, "b": 2.0}
    assert [c.item_id for c in ctx.candidates] == ["a", "b"]
    assert ctx.model_version == "v-old"


class ReversingRanker:
    """Scores candidates in reverse of the order it receives them."""

    async def score(self, requests: list[ScoreItem]) -> tuple[list[list[float]], str]:
        n = len(requests[0].candidates)
        return [[float(i) for i in range(n)]], "v-new"

    async def score_detailed(self, requests: list[ScoreItem]) -> ScoreResponse:
        scores, version = await self.score(requests)
        return ScoreResponse(scores=scores, model_version=version, ranker="candidate")

    async def ready(self) -> bool:
        return True


def test_score_then_sort_orders_candidates_best_first() -> None:
    ctx = RecContext(RecRequest("u"), user_state=UserState(user_id="u", known=True,
                                                           history=["h"]))
    ctx.candidates = [cand("a"), cand("b"), cand("c")]
    run(Score(ReversingRanker()).run(ctx))
    assert [c.item_id for c in ctx.candidates] == ["a", "b", "c"]  # score only scores
    run(SortByScore().run(ctx))
    assert [c.item_id for c in ctx.candidates] == ["c", "b", "a"]
    assert ctx.ranked and ctx.scores == {"a": 0.0, "b": 1.0, "c": 2.0}
    assert ctx.model_version == "v-new"


def test_catalog_popular_prefers_interest_matches_and_skips_excluded() -> None:
    cat = Catalog(version="v", meta={i: meta(i, tags) for i, tags in
                                     [("p1", ["x"]), ("p2", ["cats"]), ("p3", []),
                                      ("p4", ["cats"])]},
                  popular=["p1", "p2", "p3", "p4"],
                  popularity={"p1": 4, "p2": 3, "p3": 2, "p4": 1})
    got = cat.popular_candidates(3, exclude={"p4"}, tags=["cats"])
    assert [(c.item_id, c.source) for c in got] == [("p2", "tags"), ("p1", "popular"),
                                                    ("p3", "popular")]
    cat.forget("p2")
    assert [c.item_id for c in cat.popular_candidates(3, exclude=set())] == ["p1", "p3", "p4"]


def test_tags_the_request_asked_for_are_not_capped() -> None:
    ranked = pairs([("a1", ["a", "x"]), ("a2", ["a", "x"]), ("a3", ["a", "y"]),
                    ("b1", ["b"])])
    chosen = [c.item_id for c, _ in diversify(ranked, k=3, max_per_tag=1,
                                              exempt=frozenset({"a"}))]
    assert chosen == ["a1", "a3", "b1"]  # "a" uncapped, "x" still capped at one


def test_retrieve_asks_only_what_can_reach_the_answer() -> None:
    caps = {"ann": 300, "cooc": 100, "content": 100, "tags": 50, "popular": 50}
    stage = Retrieve(retrieval=None, caps=caps, catalog=Catalog.empty())  # type: ignore[arg-type]
    # a user with a history: ANN's head; tags only for interests
    assert stage.caps_for(RecRequest("u", k=20), True) == sources_only(ann=40)  # 2k
    assert stage.caps_for(RecRequest("u", k=5, interests=("x",)), True) == sources_only(
        ann=30, tags=50)
    # interests: reserved places draw on the head, which is 3k then (head.py)
    assert stage.caps_for(RecRequest("u", k=20, interests=("x",)), True) == sources_only(
        ann=60, tags=50)
    assert stage.caps_for(RecRequest("u", k=100), True)["ann"] == 200
    small = Retrieve(retrieval=None, caps={**caps, "ann": 150},  # type: ignore[arg-type]
                     catalog=Catalog.empty())
    assert small.caps_for(RecRequest("u", k=100), True)["ann"] == 150  # the setting wins
    # no history (nothing to search with) or tag filters (may remove most): every source
    assert stage.caps_for(RecRequest("u", k=20), False) == caps
    assert stage.caps_for(RecRequest("u", k=20, exclude_tags=frozenset({"x"})), True) == caps


def test_a_candidate_ranker_gets_the_head_of_every_source() -> None:
    caps = {"ann": 300, "cooc": 100, "content": 100, "tags": 50, "popular": 50}
    budget = {"ann": 150, "cooc": 50, "content": 30, "tags": 15, "popular": 5}
    catalog = Catalog.empty()
    catalog.candidate_ranker = True
    stage = Retrieve(None, caps, catalog, None, budget)  # type: ignore[arg-type]
    assert stage.caps_for(RecRequest("u", k=20), True) == budget
    assert stage.caps_for(RecRequest("u", k=5, interests=("x",)), True) == budget
    # no history or tag filters: every source at its full cap, as without the ranker
    assert stage.caps_for(RecRequest("u", k=20), False) == caps
    assert stage.caps_for(RecRequest("u", k=20, exclude_tags=frozenset({"x"})), True) == caps
    # the budget stays within the caps: a source switched off (an arm's, say) stays off
    off = Retrieve(None, {**caps, "content": 0, "ann": 100}, catalog, None,  # type: ignore[arg-type]
                   budget)
    assert off.caps_for(RecRequest("u", k=20), True) == {"ann": 100, "cooc": 50, "content": 0,
                                                         "tags": 15, "popular": 5}
    # without a budget the ranker gets every source's full cap
    assert Retrieve(None, caps, catalog).caps_for(  # type: ignore[arg-type]
        RecRequest("u", k=20), True) == caps
    # an arm that keeps retrieval's order (ranker off) asks only what can reach the answer
    plain = Retrieve(None, caps, catalog, None, budget, ranker=False)  # type: ignore[arg-type]
    assert plain.caps_for(RecRequest("u", k=20), True) == sources_only(ann=40)


def test_the_head_keeps_the_best_interest_matches_behind_it() -> None:
    ctx = RecContext(RecRequest("u", k=8, interests=("cats",)))  # head 30, quota 2
    ctx.candidates = ([cand(f"a{i}") for i in range(50)]
                      + [cand(f"c{i}", source="tags", matched_tags=["cats"]) for i in range(9)])
    keep_head(ctx)
    assert [c.item_id for c in ctx.candidates[30:]] == ["c0", "c1", "c2", "c3"]
    assert len(ctx.candidates) == 34


def test_interests_get_a_quarter_of_the_list() -> None:
    ranked = pairs([("a1", ["x"]), ("a2", ["y"]), ("a3", ["z"]), ("a4", ["w"]),
                    ("c1", ["cats"]), ("c2", ["cats", "v"]), ("c3", ["cats"])])
    chosen = diversify(ranked, k=4, max_per_tag=3)
    got = reserve(chosen, ranked, k=4, quota=1, interests=frozenset({"cats"}))
    assert [c.item_id for c, _ in got] == ["a1", "a2", "a3", "c1"]
    got = reserve(chosen, ranked, k=4, quota=2, interests=frozenset({"cats"}))
    assert [c.item_id for c, _ in got] == ["a1", "a2", "c1", "c2"]
    # already enough: unchanged
    assert reserve(got, ranked, k=4, quota=2, interests=frozenset({"cats"})) == got


def test_the_config_lists_every_step_with_its_policy() -> None:
    """pipeline/config.py tells the whole story: the head cut and the sort are steps of their
    own, stages with a dependency have a time limit and a fallback, pure ones neither."""
    from services.gateway.pipeline.config import recommendation_pipeline
    from shared.settings import Settings

    pipeline = recommendation_pipeline(Settings(), None, None, None,  # type: ignore[arg-type]
                                       Catalog.empty())
    assert [s.name for s in pipeline.steps] == [
        "hydrate", "retrieve", "prefilter", "score", "sort", "head", "items", "filter",
        "select", "explain"]
    for step in pipeline.steps:
        io = step.name in ("hydrate", "retrieve", "score", "items")
        assert step.fail_open is io and (step.timeout_s is not None) is io, step.name
        assert callable(getattr(step.stage, "fallback", None)) is io, step.name
