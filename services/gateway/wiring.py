"""Connect the gateway to its three dependencies: the in-process class when the part's URL
setting is empty (one-process serving), its HTTP client otherwise. Whatever is created here is
closed by the returned closers (objects passed in by the caller are the caller's to close).
HTTP clients use the lean transport (transport.py) for plain http:// URLs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.contracts import FeatureStoreAPI, RankingAPI, RetrievalAPI
from shared.http_transport import transport_for
from shared.settings import Settings

# The request path enforces its own, much shorter, per-stage limits (pipeline/config.py); this
# bounds the other calls (events, admin upserts that compute an embedding, reloads).
CLIENT_TIMEOUT_S = 10.0

Closer = Callable[[], Awaitable[None] | None]


async def connect(settings: Settings, feature_store: FeatureStoreAPI | None,
                  retrieval: RetrievalAPI | None, ranking: RankingAPI | None,
                  ) -> tuple[tuple[FeatureStoreAPI, RetrievalAPI, RankingAPI], list[Closer]]:
    closers: list[Closer] = []
    if feature_store is None:
        feature_store = await _feature_store(settings, closers)
    if retrieval is None:
        retrieval = await _retrieval(settings, feature_store, closers)
    if ranking is None:
        ranking = await _ranking(settings, closers)
    return (feature_store, retrieval, ranking), closers


async def _feature_store(settings: Settings, closers: list[Closer]) -> FeatureStoreAPI:
    if settings.feature_store_url:
        from services.feature_store.client import FeatureStoreClient

        client = FeatureStoreClient(settings.feature_store_url, CLIENT_TIMEOUT_S,
                                    transport=transport_for(settings.feature_store_url))
        closers.append(client.aclose)
        return client
    from services.feature_store.store import FeatureStore

    store = FeatureStore.from_settings(settings)
    closers.append(store.aclose)
    return store


async def _retrieval(settings: Settings, feature_store: FeatureStoreAPI,
                     closers: list[Closer]) -> RetrievalAPI:
    if settings.retrieval_url:
        from services.retrieval.client import RetrievalClient

        client = RetrievalClient(settings.retrieval_url, CLIENT_TIMEOUT_S,
                                 admin_token=settings.admin_token,
                                 transport=transport_for(settings.retrieval_url))
        closers.append(client.aclose)
        return client
    from services.retrieval.service import ItemStore, RetrievalService

    # Retrieval records item upserts/deletes in the feature store (metadata and overlay); it
    # needs the store itself, not its HTTP client.
    item_store: ItemStore
    if isinstance(feature_store, ItemStore):
        item_store = feature_store
    else:
        from services.feature_store.store import FeatureStore

        store = FeatureStore.from_settings(settings)
        closers.append(store.aclose)
        item_store = store
    service = RetrievalService(settings, item_store=item_store)
    await service.reload()
    return service


async def _ranking(settings: Settings, closers: list[Closer]) -> RankingAPI:
    if settings.ranking_url:
        from services.ranking.client import RankingClient

        client = RankingClient(settings.ranking_url, CLIENT_TIMEOUT_S,
                               transport=transport_for(settings.ranking_url))
        closers.append(client.aclose)
        return client
    from services.ranking.new_items import RedisOverlayContent
    from services.ranking.service import RankingService

    # Items upserted while serving: their content comes from the feature store's overlay in
    # Redis (retrieval writes it there), in one process as in four.
    new_items = RedisOverlayContent.from_settings(settings)
    closers.append(new_items.aclose)
    service = RankingService(settings, new_item_content=new_items)
    await service.reload()
    return service
