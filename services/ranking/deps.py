"""FastAPI dependencies of the ranking service: the live service and the admin check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.ranking.service import RankingService
from shared.admin import Admin as Admin  # 401 without a token, 403 with a wrong one


async def get_service(request: Request) -> RankingService:
    # async: FastAPI would run a plain def dependency in a worker thread, on every request
    service: RankingService = request.app.state.ranking
    return service


Service = Annotated[RankingService, Depends(get_service)]
