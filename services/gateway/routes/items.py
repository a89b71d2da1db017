"""GET /v1/items/{id}, GET /v1/items/{id}/similar, GET /v1/popular; admin PUT/DELETE
/v1/items/{id} (forwarded to retrieval, which computes the embedding and updates the indexes)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import Response

from services.gateway.deps import Admin, GatewayDep, parse_tags
from services.gateway.gateway import Gateway
from services.gateway.responses import JSON
from services.gateway.schemas import PopularItems, SimilarItems
from shared.contracts import ItemMeta, ItemUpsert, RetrievalQuery, sources_only
from shared.errors import DEPENDENCY_ERRORS
from shared.openapi import error_response
from shared.validation import MAX_LIST_PARAMS, Identifier, TagQuery

router = APIRouter(tags=["items"])
log = logging.getLogger("vidrec.gateway")

ItemId = Annotated[Identifier, Path()]
ADMIN_TIMEOUT_S = 10.0  # an upsert may compute an embedding


async def lookup_meta(gateway: Gateway, item_ids: list[str]) -> dict[str, ItemMeta]:
    """Item meta from the feature store; the bundle catalog when the store cannot answer."""
    try:
        async with asyncio.timeout(gateway.settings.timeout_items_s * 4):
            found = dict(await gateway.feature_store.item_meta(item_ids))
    except DEPENDENCY_ERRORS as exc:
        log.warning("gateway: item meta from the catalog (%s: %s)", type(exc).__name__, exc)
        found = {}
    known = gateway.catalog.meta
    for item_id in item_ids:
        if item_id not in found and item_id in known:
            found[item_id] = known[item_id]
    return found


@router.get("/v1/items/{item_id}", response_model=ItemMeta,
            responses={404: error_response(404), 410: error_response(410)},
            summary="One video's metadata (404: never in the catalogue, 410: deleted)")
async def get_item(gateway: GatewayDep, item_id: ItemId) -> JSON:
    meta = (await lookup_meta(gateway, [item_id])).get(item_id)
    if meta is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id!r} not found")
    if not meta.available:  # deleted: its metadata is kept (events may still name it)
        raise HTTPException(status.HTTP_410_GONE, f"item {item_id!r} was deleted")
    return JSON(asdict(meta))


@router.get("/v1/items/{item_id}/similar", response_model=SimilarItems,
            responses={404: error_response(404)},
            summary="Videos like this one: learned and content neighbours (404: unknown item)")
async def similar(gateway: GatewayDep, item_id: ItemId,
                  k: Annotated[int, Query(ge=1, le=100)] = 10) -> JSON:
    # An unknown or deleted item raises ItemNotFound -> 404; retrieval down -> 503 (errors.py).
    async with asyncio.timeout(gateway.settings.timeout_retrieve_s * 4):
        neighbours = await gateway.retrieval.similar(item_id, k)
    meta = await lookup_meta(gateway, [item_id, *(n.item_id for n in neighbours)])
    items = [{"item_id": n.item_id, "title": meta[n.item_id].title, "tags": meta[n.item_id].tags,
              "score": n.score, "source": n.source}
             for n in neighbours if n.item_id in meta and meta[n.item_id].available]
    this = meta.get(item_id)
    return JSON({"item_id": item_id, "title": this.title if this else "",
                 "tags": this.tags if this else [], "items": items})


@router.get("/v1/popular", response_model=PopularItems, summary="Popular videos")
async def popular(
    gateway: GatewayDep,
    k: Annotated[int, Query(ge=1, le=100)] = 20,
    tags: Annotated[list[TagQuery] | None, Query(
        max_length=MAX_LIST_PARAMS, description="Only items with one of these.")] = None,
) -> JSON:
    wanted = parse_tags(tags)
    try:
        async with asyncio.timeout(gateway.settings.timeout_retrieve_s * 4):
            (result,) = await gateway.retrieval.retrieve([RetrievalQuery(
                tags=dict.fromkeys(wanted, 1.0),
                caps=sources_only(tags=k) if wanted else sources_only(popular=k))])
        ids = [c.item_id for c in result.candidates]
    except DEPENDENCY_ERRORS as exc:
        log.warning("gateway: popular from the catalog (%s: %s)", type(exc).__name__, exc)
        ids = [c.item_id for c in gateway.catalog.popular_candidates(k, frozenset(), wanted)
               if not wanted or c.matched_tags]
    meta = await lookup_meta(gateway, ids)
    items = [meta[i] for i in ids if i in meta and meta[i].available][:k]
    return JSON({"items": [asdict(m) for m in items]})


@router.put("/v1/items/{item_id}", response_model=ItemMeta, dependencies=[Admin],
            summary="Add or replace a video (admin)")
async def upsert_item(gateway: GatewayDep, item_id: ItemId, body: ItemUpsert) -> JSON:
    async with asyncio.timeout(ADMIN_TIMEOUT_S):
        meta = await gateway.retrieval.upsert_item(item_id, body)
    gateway.catalog.remember(meta)
    return JSON(asdict(meta))


@router.delete("/v1/items/{item_id}", status_code=204, dependencies=[Admin],
               responses={404: error_response(404)},
               summary="Remove a video from recommendations (admin)")
async def delete_item(gateway: GatewayDep, item_id: ItemId) -> Response:
    async with asyncio.timeout(ADMIN_TIMEOUT_S):
        await gateway.retrieval.delete_item(item_id)
    gateway.catalog.forget(item_id)
    return Response(status_code=204)
