"""GET /v1/items/{id}/similar; PUT and DELETE /v1/items/{id} (admin): the live catalogue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from services.retrieval.deps import Admin, Service
from services.retrieval.errors import ItemNotFound
from services.retrieval.similar import MAX_SIMILAR
from shared.contracts import ItemMeta, ItemUpsert, SimilarResponse
from shared.openapi import error_response

router = APIRouter(tags=["items"])


@router.get("/v1/items/{item_id}/similar", response_model=SimilarResponse,
            responses={404: error_response(404)})
async def similar(item_id: str, svc: Service,
                  k: Annotated[int, Query(ge=1, le=MAX_SIMILAR)] = 10) -> Response:
    try:
        items = svc.similar_now(item_id, k)
    except ItemNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    version = svc.state.version
    return Response(SimilarResponse(item_id=item_id, items=items, bundle=version)
                    .model_dump_json(), media_type="application/json")


@router.put("/v1/items/{item_id}", dependencies=[Admin])
async def upsert(item_id: str, body: ItemUpsert, svc: Service) -> ItemMeta:
    return await svc.upsert_item(item_id, body)


@router.delete("/v1/items/{item_id}", dependencies=[Admin],
               responses={404: error_response(404)},
               status_code=status.HTTP_204_NO_CONTENT)
async def delete(item_id: str, svc: Service) -> Response:
    try:
        await svc.delete_item(item_id)
    except ItemNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
