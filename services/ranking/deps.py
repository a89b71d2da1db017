"""FastAPI dependencies of the ranking service: the live service (the admin check of its
admin routes is in shared/bundle_admin.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.ranking.service import RankingService


async def get_service(request: Request) -> RankingService:
    # async: FastAPI would run a plain def dependency in a worker thread, on every request
    service: RankingService = request.app.state.ranking
    return service


Service = Annotated[RankingService, Depends(get_service)]
