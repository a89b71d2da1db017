"""The gateway's live state: its three dependencies, the bundle catalog and the request path.

One object so that a reload swaps catalog and pipeline together: a request holds the pipeline
it started with, so it never sees half a reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.gateway.catalog import Catalog
from services.gateway.pipeline import RecContext, RecRequest, recommendation_pipeline
from services.gateway.pipeline.stage import Pipeline
from shared.bundle import Bundle, BundleError
from shared.contracts import FeatureStoreAPI, RankingAPI, RetrievalAPI, ServiceUnavailable
from shared.settings import Settings

log = logging.getLogger("vidrec.gateway")

READY_TIMEOUT_S = 1.0
RELOAD_TIMEOUT_S = 300.0


def load_catalog(settings: Settings, version: str | None = None) -> Catalog:
    try:
        return Catalog.from_bundle(Bundle.open(settings.artifacts_dir, version or settings.bundle))
    except BundleError as exc:
        # The gateway can still serve from its dependencies; only its fallbacks need the bundle.
        log.warning("gateway: no bundle catalog (%s); fallbacks will be empty", exc)
        return Catalog.empty()


@dataclass
class Gateway:
    settings: Settings
    feature_store: FeatureStoreAPI
    retrieval: RetrievalAPI
    ranking: RankingAPI
    catalog: Catalog
    pipeline: Pipeline = field(init=False)
    # Called on shutdown (close clients, stop executors), in order.
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pipeline = self._build_pipeline(self.catalog)

    def _build_pipeline(self, catalog: Catalog) -> Pipeline:
        return recommendation_pipeline(self.settings, self.feature_store, self.retrieval,
                                       self.ranking, catalog)

    async def recommend(self, request: RecRequest) -> RecContext:
        return await self.pipeline.run(RecContext(request))

    def swap_catalog(self, catalog: Catalog) -> None:
        """Items upserted through this gateway stay known across a bundle change."""
        catalog.keep_upserts_from(self.catalog)
        pipeline = self._build_pipeline(catalog)
        self.catalog, self.pipeline = catalog, pipeline

    async def reload(self, version: str | None = None) -> dict[str, Any]:
        """New bundle in retrieval and ranking (each swaps atomically), then in the gateway."""
        out: dict[str, Any] = {}
        for name, service in (("retrieval", self.retrieval), ("ranking", self.ranking)):
            reload = getattr(service, "reload", None)
            if reload is not None:
                out[name] = await reload(version)
            elif getattr(service, "base_url", None):  # an HTTP client without reload()
                out[name] = await self._reload_remote(service.base_url, version)
        catalog = await asyncio.to_thread(load_catalog, self.settings, version)
        self.swap_catalog(catalog)
        out["bundle"] = catalog.version
        return out

    async def _reload_remote(self, base_url: str, version: str | None) -> str:
        async with httpx.AsyncClient(base_url=base_url, timeout=RELOAD_TIMEOUT_S) as http:
            try:
                r = await http.post("/admin/reload", json={"bundle": version}, headers={
                    "authorization": f"Bearer {self.settings.admin_token}"})
            except httpx.TransportError as exc:
                raise ServiceUnavailable(f"reload at {base_url}: {exc!r}") from exc
        if r.status_code != 200:
            raise ServiceUnavailable(f"reload at {base_url}: HTTP {r.status_code} {r.text[:300]}")
        return str(r.json()["bundle"])

    async def readiness(self) -> dict[str, Any]:
        parts = await asyncio.gather(*(_ready(s) for s in
                                       (self.feature_store, self.retrieval, self.ranking)))
        state = dict(zip(("feature_store", "retrieval", "ranking"), parts, strict=True))
        return {"ready": all(parts), **state, "bundle": self.catalog.version}

    async def close(self) -> None:
        for close in self.closers:
            try:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # shutting down: report, keep closing the rest
                log.exception("gateway: error while closing")


async def _ready(service: Any) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            return bool(await service.ready())
    except Exception:
        return False
