"""RetrievalService: the in-process RetrievalAPI (shared/contracts.py).

Concurrency: every read and every in-memory mutation of the served state runs on the event loop
thread and contains no await, so a request sees the state either before or after an upsert, never
between. Slow work runs in worker threads on objects no request can see yet: embedding a new
item's text, appending to the overlay file, and loading a whole bundle for `reload`, which then
replaces one reference. A request already running keeps the state it started with.

Catalogue changes (upsert, delete) are written to the overlay file before they are applied, then
to the feature store (item metadata for the gateway, embedding for a standalone ranker, and a
second copy of the overlay). Start-up and reload replay the newest change per item from both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from threadpoolctl import threadpool_limits

from services.feature_store.codec import OverlayItem
from services.retrieval.errors import (
    InvalidRequest,
    ItemNotFound,
    MetadataNotStored,
)
from services.retrieval.overlay import OverlayLog, merge
from services.retrieval.retrieve import retrieve_batch, retrieve_steps
from services.retrieval.similar import MAX_SIMILAR, similar_items
from services.retrieval.state import RetrievalState, load_state
from services.retrieval.writes import apply_overlay, apply_put, check_item_id, validated_embedding
from shared.bundle import Bundle, resolve_bundle
from shared.contracts import (
    BundleNotServed,
    ItemMeta,
    ItemUpsert,
    Neighbour,
    RetrievalQuery,
    RetrievalResult,
    ServiceUnavailable,
)
from shared.data.types import normalise_tag
from shared.memory import freeze_loaded, return_freed_memory
from shared.observability import BUNDLE_BYTES, CANDIDATES, DEGRADED, timed
from shared.settings import Settings
from shared.steps import run_in_steps
from shared.text import item_text

log = logging.getLogger(__name__)
SERVICE = "retrieval"


@runtime_checkable
class ItemStore(Protocol):
    """What retrieval needs of the feature store (services/feature_store/store.py)."""

    async def put_item(self, meta: ItemMeta, embedding: list[float] | None = None) -> None: ...
    async def delete_item(self, item_id: str) -> bool: ...
    async def overlay_items(self) -> list[OverlayItem]: ...


class NotLoaded(ServiceUnavailable):
    """No bundle is loaded yet (start-up has not finished or failed)."""


class RetrievalService:
    def __init__(self, settings: Settings, item_store: ItemStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.item_store = item_store
        self.clock = clock
        self.overlay = OverlayLog(settings.state_dir)
        self.default_caps = settings.candidate_caps
        self._state: RetrievalState | None = None
        # Bundles served side by side for experiment arms: version -> state, or None for a
        # version that is the main bundle under another name (e.g. "latest").
        self._extra: dict[str, RetrievalState | None] = {}
        self._changes = asyncio.Lock()  # one upsert/delete/reload at a time
        # One request's matrix products are tiny; a multi-threaded BLAS only waits on its own
        # threads, which on a busy 2-core machine turned a 20 us product into 15 ms.
        threadpool_limits(limits=1, user_api="blas")

    @classmethod
    async def open(cls, settings: Settings, item_store: ItemStore | None = None,
                   version: str | None = None) -> RetrievalService:
        service = cls(settings, item_store)
        await service.reload(version)
        return service

    # ---- lifecycle ----------------------------------------------------------------------
    async def reload(self, version: str | None = None) -> str:
        """Load bundle `version` (default settings.bundle) with every overlay change replayed,
        then swap it in. On failure the old state keeps serving and the error propagates."""
        async with self._changes:
            remote = await self._remote_overlay()
            state, local = await asyncio.to_thread(self._build, version or self.settings.bundle,
                                                   remote or [])
            old = self._state
            self._state = state  # the swap: requests that hold the old state finish on it
            if old is not None and old.version != state.version:
                with contextlib.suppress(KeyError):
                    BUNDLE_BYTES.remove(SERVICE, old.version, "main")
            BUNDLE_BYTES.labels(SERVICE, state.version, "main").set(state.memory_bytes())
            if remote is not None:
                await self._heal_store(local, remote)
            del old  # the previous state is freed once its last request finishes; the
            # parsed items.json of this load is freed already: give its pages back
            await asyncio.to_thread(return_freed_memory)
            freeze_loaded()  # the new state: out of the collector's full passes
        log.info("retrieval: serving %s (%d items, %s index on %s)", state.version,
                 state.live_items, state.index_kind, state.faiss_device)
        return state.version

    def _build(self, version: str, remote: list[OverlayItem]
               ) -> tuple[RetrievalState, list[OverlayItem]]:
        state = load_state(Bundle.open(self.settings.artifacts_dir, version), self.settings)
        local = self.overlay.read()
        apply_overlay(state, merge(local, remote))
        return state, local

    async def _remote_overlay(self) -> list[OverlayItem] | None:
        """The feature store's overlay; None when there is no store or it cannot answer."""
        if self.item_store is None:
            return None
        try:
            return await self.item_store.overlay_items()
        except ServiceUnavailable as exc:  # the overlay file still has this process's changes
            DEGRADED.labels(SERVICE, "overlay").inc()
            log.warning("retrieval: feature store overlay unavailable, file only: %s", exc)
            return None

    async def _heal_store(self, local: list[OverlayItem], remote: list[OverlayItem]) -> None:
        """Write back changes the feature store lost (e.g. a Redis without persistence that
        restarted), so the gateway can show those items again."""
        store = self.item_store
        if store is None:
            return
        known = {e.meta.item_id: e.updated_at for e in remote}
        lost = [e for e in local if known.get(e.meta.item_id, -1.0) < e.updated_at]
        try:
            for e in lost:
                if e.meta.available:
                    await store.put_item(e.meta, e.embedding)
                else:
                    await store.delete_item(e.meta.item_id)
        except ServiceUnavailable as exc:
            DEGRADED.labels(SERVICE, "overlay").inc()
            log.warning("retrieval: could not restore %d item(s) in the feature store: %s",
                        len(lost), exc)

    async def serve_bundles(self, versions: list[str]) -> dict[str, Any]:
        """Hold exactly these bundle versions besides the main one (experiment arms): load the
        missing ones (overlay changes replayed), drop the others. A failed load changes nothing
        and raises."""
        async with self._changes:
            main = self.state
            extra: dict[str, RetrievalState | None] = {}
            remote: list[OverlayItem] | None = None
            for version in dict.fromkeys(versions):
                if version in self._extra and self._extra[version] is not None:
                    extra[version] = self._extra[version]
                    continue
                path = await asyncio.to_thread(resolve_bundle, self.settings.artifacts_dir,
                                               version)
                if path == main.bundle.path:
                    extra[version] = None
                    continue
                if remote is None:
                    remote = await self._remote_overlay() or []
                extra[version], _ = await asyncio.to_thread(self._build, version, remote)
            for version, state in self._extra.items():
                if state is not None and extra.get(version) is None:
                    with contextlib.suppress(KeyError):
                        BUNDLE_BYTES.remove(SERVICE, state.version, "extra")
            self._extra = extra
            for state in extra.values():
                if state is not None:
                    BUNDLE_BYTES.labels(SERVICE, state.version, "extra").set(state.memory_bytes())
            freeze_loaded()  # arms' states too: out of the collector's full passes
        log.info("retrieval: main bundle %s, extra %s", main.version, sorted(extra) or "none")
        return {"main": main.version, "extra": sorted(extra)}

    def state_for(self, bundle: str | None) -> RetrievalState:
        state = self.state
        if bundle is None or bundle == state.version:
            return state
        if bundle not in self._extra:
            raise BundleNotServed(f"retrieval: bundle {bundle!r} is not served here (main "
                                  f"{state.version}, extra {sorted(self._extra) or 'none'})")
        return self._extra[bundle] or state

    def _extra_states(self) -> list[RetrievalState]:
        return [s for s in self._extra.values() if s is not None]

    @property
    def state(self) -> RetrievalState:
        if self._state is None:
            raise NotLoaded("retrieval: no bundle loaded")
        return self._state

    async def ready(self) -> bool:
        return self._state is not None

    def readiness(self) -> dict[str, Any]:
        s = self._state
        if s is None:
            return {"ready": False, "service": SERVICE, "bundle": None}
        return {"ready": True, "service": SERVICE, "bundle": s.version,
                "extra_bundles": sorted(self._extra), "index": s.index_kind,
                "device": s.faiss_device, "onnx_device": s.onnx_device, "items": s.live_items,
                "rows": s.n_rows, "overlay_changes": s.overlay_applied,
                "text_encoder": s.text_encoder is not None, "notes": s.notes}

    # ---- reads --------------------------------------------------------------------------
    async def retrieve(self, queries: list[RetrievalQuery],
                       bundle: str | None = None) -> list[RetrievalResult]:
        """In process (the one-process gateway): the same work as `retrieve_now`, pausing for
        the event loop between its steps (shared/steps.py)."""
        state = self.state_for(bundle)  # one reference for the whole batch
        with timed(SERVICE, "retrieve"):
            results = await run_in_steps(retrieve_steps(state, queries, self.default_caps))
        self._count(results)
        return results

    def retrieve_now(self, queries: list[RetrievalQuery],
                     bundle: str | None = None) -> tuple[list[RetrievalResult], str]:
        """Synchronous: the results and the bundle version that produced them."""
        state = self.state_for(bundle)  # one reference for the whole batch
        with timed(SERVICE, "retrieve"):
            results = retrieve_batch(state, queries, self.default_caps)
        self._count(results)
        return results, state.version

    def _count(self, results: list[RetrievalResult]) -> None:
        for source in self.default_caps:
            CANDIDATES.labels(source).inc(sum(r.per_source[source] for r in results))

    async def similar(self, item_id: str, k: int) -> list[Neighbour]:
        return self.similar_now(item_id, k)

    def similar_now(self, item_id: str, k: int) -> list[Neighbour]:
        """Up to k items like `item_id` (similar.py); ItemNotFound for an id not in the live
        catalogue (never there, or deleted)."""
        if not 1 <= k <= MAX_SIMILAR:
            raise InvalidRequest("k", f"must be between 1 and {MAX_SIMILAR}, got {k}")
        state = self.state
        row = state.row_of.get(item_id)
        if row is None or state.dead.view[row]:
            raise ItemNotFound(item_id)
        with timed(SERVICE, "similar"):
            return similar_items(state, row, k)

    # ---- catalogue changes --------------------------------------------------------------
    async def upsert_item(self, item_id: str, item: ItemUpsert) -> ItemMeta:
        check_item_id(item_id)
        tags = list(dict.fromkeys(t for t in map(normalise_tag, item.tags) if t))
        state = self.state
        with timed(SERVICE, "tag_clusters"):  # new tags are embedded: off the event loop
            clusters = await asyncio.to_thread(state.tag_clusters.assign, tags,
                                               state.text_encoder)
        meta = ItemMeta(item_id=item_id, title=item.title, tags=tags, available=True,
                        clusters=clusters if state.tag_clusters.enabled else [])
        if item.embedding is not None:
            embedding = validated_embedding(item.embedding, state.content_dim)
        elif state.text_encoder is None:
            raise InvalidRequest("embedding", f"required: bundle {state.version} has no text "
                                 "encoder to compute it from title and tags")
        else:
            with timed(SERVICE, "text_encoder"):
                embedding = (await asyncio.to_thread(state.text_encoder.encode,
                                                     [item_text(item.title, tags)]))[0]
        entry = OverlayItem(meta=meta, embedding=embedding.tolist(), updated_at=self.clock())
        async with self._changes:
            state = self.state  # a reload may have swapped it while the text was encoded
            if len(embedding) != state.content_dim:
                raise ServiceUnavailable("retrieval: the bundle changed its embedding size "
                                         "during the upsert; repeat it")
            await asyncio.to_thread(self.overlay.append, entry)  # durable before visible
            apply_put(state, entry, embedding)
            for extra in self._extra_states():  # arms' bundles see the same catalogue
                if extra.content_dim == len(embedding):
                    apply_put(extra, entry, embedding)
        await self._tell_store(self._store_put(meta, entry.embedding), item_id)
        return meta

    async def delete_item(self, item_id: str) -> None:
        state = self.state
        row = state.row_of.get(item_id)
        if row is None:
            raise ItemNotFound(item_id)
        meta = ItemMeta(item_id=item_id, title=state.titles[row], tags=list(state.tags[row]),
                        available=False, clusters=list(state.clusters[row])
                        if state.tag_clusters.enabled else [])
        async with self._changes:
            await asyncio.to_thread(self.overlay.append,
                                    OverlayItem(meta=meta, updated_at=self.clock()))
            for state in (self.state, *self._extra_states()):
                row = state.row_of.get(item_id)
                if row is not None:
                    state.kill(row)
        await self._tell_store(self._store_delete(item_id), item_id)

    async def _store_put(self, meta: ItemMeta, embedding: list[float] | None) -> None:
        if self.item_store is not None:
            await self.item_store.put_item(meta, embedding)

    async def _store_delete(self, item_id: str) -> None:
        if self.item_store is not None:
            await self.item_store.delete_item(item_id)

    async def _tell_store(self, write: Awaitable[object], item_id: str) -> None:
        try:
            await write
        except ServiceUnavailable as exc:
            DEGRADED.labels(SERVICE, "item_meta").inc()
            raise MetadataNotStored(
                f"item {item_id!r}: change applied to retrieval and saved, but the feature "
                f"store did not record its metadata ({exc}); repeat the call") from exc
