"""FastAPI dependencies of the retrieval service: the live service and the admin check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.retrieval.service import RetrievalService
from shared.admin import Admin as Admin  # 401 without a token, 403 with a wrong one


async def get_service(request: Request) -> RetrievalService:
    # async: FastAPI would run a plain def dependency in a worker thread, on every request
    service: RetrievalService = request.app.state.retrieval
    return service


Service = Annotated[RetrievalService, Depends(get_service)]
