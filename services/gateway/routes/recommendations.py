"""GET /v1/users/{user_id}/recommendations: the request path of pipeline/config.py, in the
user's experiment arm when an experiment is active (experiments/). Every answer carries a
request_id and is logged as an impression."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query

from services.gateway.deps import GatewayDep, parse_tags
from services.gateway.errors import field_error
from services.gateway.experiments.assignment import HEADER, Assignment, UnknownArm
from services.gateway.pipeline import RecContext, RecRequest
from services.gateway.responses import JSON
from services.gateway.schemas import Recommendations
from shared.admission import mark_degraded
from shared.validation import MAX_LIST_PARAMS, Identifier, TagQuery

router = APIRouter(tags=["recommendations"])

UserId = Annotated[Identifier, Path()]
Tags = list[TagQuery] | None


def render(ctx: RecContext, request_id: str, assignment: Assignment | None) -> dict[str, Any]:
    return {
        "user_id": ctx.request.user_id,
        "items": [{"item_id": p.meta.item_id, "title": p.meta.title, "tags": p.meta.tags,
                   "score": p.score, "reasons": p.reasons, "source": p.candidate.source}
                  for p in ctx.picks],
        "model_version": ctx.model_version,
        "degraded": ctx.degraded,
        "request_id": request_id,
        "experiment": assignment.experiment if assignment else None,
        "arm": assignment.arm if assignment else None,
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
    arm: Annotated[str | None, Header(
        alias=HEADER, max_length=200,
        description="QA only: force an arm of the active experiment ('arm' or "
                    "'experiment:arm'); such answers are logged but not counted.")] = None,
) -> JSON:
    start = time.perf_counter()
    try:
        assignment = gateway.assign(user_id, arm)
    except UnknownArm as exc:
        raise field_error(("header", HEADER), str(exc), "unknown_arm", arm) from None
    request = RecRequest(user_id=user_id, k=k, exclude=frozenset(exclude or ()),
                         include_tags=frozenset(parse_tags(include_tags)),
                         exclude_tags=frozenset(parse_tags(exclude_tags)),
                         interests=tuple(parse_tags(interests)))
    try:
        ctx = await gateway.recommend(request, assignment)
    except Exception:
        if assignment is not None:
            gateway.log_error(assignment, time.perf_counter() - start)
        raise
    if ctx.degraded:
        mark_degraded()  # its time is a dependency's timer, not our capacity
    request_id = uuid.uuid4().hex
    gateway.log_answer(ctx, request_id, assignment, time.perf_counter() - start)
    return JSON(render(ctx, request_id, assignment))
