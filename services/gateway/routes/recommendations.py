"""GET /v1/users/{user_id}/recommendations: the request path of pipeline/config.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.gateway.deps import GatewayDep, parse_tags
from services.gateway.pipeline import RecContext, RecRequest
from services.gateway.responses import JSON
from services.gateway.schemas import Recommendations
from shared.validation import MAX_LIST_PARAMS, Identifier, TagQuery

router = APIRouter(tags=["recommendations"])

UserId = Annotated[Identifier, Path()]
Tags = list[TagQuery] | None


def render(ctx: RecContext) -> dict:
    return {
        "user_id": ctx.request.user_id,
        "items": [{"item_id": p.meta.item_id, "title": p.meta.title, "tags": p.meta.tags,
                   "score": p.score, "reasons": p.reasons} for p in ctx.picks],
        "model_version": ctx.model_version,
        "degraded": ctx.degraded,
    }


@router.get("/v1/users/{user_id}/recommendations", response_model=Recommendations,
            summary="Top-k videos for a user (new users get a cold-start list)")
async def recommendations(
    gateway: GatewayDep,
    user_id: UserId,
    k: Annotated[int, Query(ge=1, le=100, description="How many items.")] = 20,
    exclude: Annotated[list[Identifier] | None, Query(
        max_length=MAX_LIST_PARAMS, description="Item ids to leave out.")] = None,
    include_tags: Annotated[Tags, Query(
        max_length=MAX_LIST_PARAMS, description="Only items with one of these tags.")] = None,
    exclude_tags: Annotated[Tags, Query(
        max_length=MAX_LIST_PARAMS, description="No item with any of these tags.")] = None,
    interests: Annotated[Tags, Query(
        max_length=MAX_LIST_PARAMS, description="Tags to favour (e.g. a new user's picks).")
    ] = None,
) -> JSON:
    request = RecRequest(user_id=user_id, k=k, exclude=frozenset(exclude or ()),
                         include_tags=frozenset(parse_tags(include_tags)),
                         exclude_tags=frozenset(parse_tags(exclude_tags)),
                         interests=tuple(parse_tags(interests)))
    return JSON(render(await gateway.recommend(request)))
