"""POST /v1/score: one score per candidate, for a batch of users."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from services.ranking.deps import Service
from shared.contracts import BundleNotServed, ScoreRequest, ScoreResponse, ServiceUnavailable
from shared.openapi import error_response

router = APIRouter(tags=["ranking"])


@router.post("/v1/score", responses={409: error_response(409)})
async def score(body: ScoreRequest, svc: Service) -> ScoreResponse:
    try:
        answer = await svc.score_detailed(body.requests, body.bundle, body.features)
    except BundleNotServed as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ServiceUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    return answer
