"""items: title, tags and availability of the candidates left after the head cut (head.py),
and of the watched items that explain them, in one feature-store call."""

from __future__ import annotations

from services.gateway.catalog import Catalog
from services.gateway.pipeline.context import RecContext
from services.gateway.pipeline.explain import watched_reason
from shared.contracts import FeatureStoreAPI


def wanted_ids(ctx: RecContext) -> list[str]:
    """The candidates, and the one watched item that explains each (explain.py)."""
    ids = dict.fromkeys(c.item_id for c in ctx.candidates)
    ids.update(dict.fromkeys(w for c in ctx.candidates if (w := watched_reason(ctx, c))))
    return list(ids)


class ItemMetaStage:
    name = "items"

    def __init__(self, feature_store: FeatureStoreAPI, catalog: Catalog) -> None:
        self.feature_store = feature_store
        self.catalog = catalog

    async def run(self, ctx: RecContext) -> None:
        ids = wanted_ids(ctx)
        found = dict(await self.feature_store.item_meta(ids)) if ids else {}
        # Items the store does not know (e.g. upserted through this gateway while the store
        # was down) are looked up in the gateway's catalog.
        known = self.catalog.meta
        for item_id in ids:
            if item_id not in found and item_id in known:
                found[item_id] = known[item_id]
        ctx.meta = found

    def fallback(self, ctx: RecContext) -> None:
        known = self.catalog.meta
        ctx.meta = {i: known[i] for i in wanted_ids(ctx) if i in known}
