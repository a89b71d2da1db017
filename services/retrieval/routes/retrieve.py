"""POST /v1/retrieve: candidates for a batch of queries."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.retrieval.deps import Service
from shared.contracts import RetrieveRequest, RetrieveResponse
from shared.openapi import error_response

router = APIRouter(tags=["retrieval"])


@router.post("/v1/retrieve", response_model=RetrieveResponse,
             responses={409: error_response(409)})
async def retrieve(body: RetrieveRequest, svc: Service) -> Response:
    results, version = svc.retrieve_now(body.queries, body.bundle)
    # Serialised by pydantic-core directly: no second validation of 100s of candidates.
    return Response(RetrieveResponse(results=results, bundle=version).model_dump_json(),
                    media_type="application/json")
