"""The recommendation request path: which stages run, in what order, with what time limit and
failure policy. This is the only place that decides how a failure is handled.

    hydrate -> retrieve -> prefilter -> score -> sort -> head -> items -> filter -> select
    -> explain

`prefilter` needs only ids; `sort` orders by the ranker's scores (or keeps retrieval's order);
`head` cuts the list to what the answer can use (head.py), so `items` fetches metadata for the
head only, and the filters that need metadata run after it. Stages that call a dependency
have a time limit and fall back (flagged in `degraded`); pure stages have neither: a failure
there is a bug and fails the request.
"""

from __future__ import annotations

from services.gateway.catalog import Catalog
from services.gateway.pipeline.explain import Explain
from services.gateway.pipeline.filters import (
    ExcludedIdsFilter,
    ExcludeTagsFilter,
    FilterStage,
    IncludeTagsFilter,
    SeenFilter,
    UnavailableFilter,
)
from services.gateway.pipeline.head import CutToHead
from services.gateway.pipeline.hydrate import Hydrate
from services.gateway.pipeline.items import ItemMetaStage
from services.gateway.pipeline.order import SortByScore
from services.gateway.pipeline.retrieve import Retrieve
from services.gateway.pipeline.score import Score
from services.gateway.pipeline.select import Select
from services.gateway.pipeline.stage import Pipeline, Step
from shared.contracts import FeatureStoreAPI, RankingAPI, RetrievalAPI
from shared.settings import Settings


def recommendation_pipeline(settings: Settings, feature_store: FeatureStoreAPI,
                            retrieval: RetrievalAPI, ranking: RankingAPI,
                            catalog: Catalog, bundle: str | None = None,
                            ranker: bool = True) -> Pipeline:
    """`bundle`: a version retrieval and ranking serve side by side (an experiment arm's; None
    for the main one); `ranker` False keeps the retrieval order (an arm without the ranker)."""
    return Pipeline([
        # Redis down or slow -> answer as for a new user (cold start).
        Step(Hydrate(feature_store, settings.history_len), settings.timeout_hydrate_s),
        # Retrieval down -> the bundle's popular list held by the gateway.
        Step(Retrieve(retrieval, settings.candidate_caps, catalog, bundle,
                      settings.ranker_caps, ranker),
             settings.timeout_retrieve_s),
        Step(FilterStage("prefilter", [SeenFilter(), ExcludedIdsFilter()]), fail_open=False),
        # Ranker down or answering the wrong shape -> keep the retrieval order and scores.
        Step(Score(ranking, catalog.version, bundle, enabled=ranker), settings.timeout_score_s),
        Step(SortByScore(), fail_open=False),
        Step(CutToHead(catalog, settings.max_per_tag), fail_open=False),
        # Item meta down -> titles and tags from the bundle's items.json.
        Step(ItemMetaStage(feature_store, catalog), settings.timeout_items_s),
        Step(FilterStage("filter", [UnavailableFilter(), IncludeTagsFilter(),
                                    ExcludeTagsFilter()]), fail_open=False),
        Step(Select(settings.max_per_tag, catalog.tag_clusters), fail_open=False),
        Step(Explain(), fail_open=False),
    ])
