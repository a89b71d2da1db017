"""What a person picking a user on the page needs: the catalogue's tags (a new user's
interests) and the bundle's users (search by id prefix, or a random one).

    GET /v1/tags?q=&limit=50     tags of available items, most common first (q: substring)
    GET /v1/users?q=&limit=20    bundle users whose id starts with q; random=true: a sample
"""

from __future__ import annotations

import random
from typing import Annotated

from fastapi import APIRouter, Query, Request

from services.gateway.deps import GatewayDep
from services.gateway.known_users import KnownUsersCache
from services.gateway.responses import JSON
from services.gateway.schemas import CatalogTags, KnownUserList
from shared.data.types import normalise_tag

router = APIRouter(tags=["browse"])
_rng = random.Random()


@router.get("/v1/tags", response_model=CatalogTags,
            summary="The catalogue's tags, most common first (for choosing interests)")
async def tags(gateway: GatewayDep,
               q: Annotated[str, Query(max_length=100, description="Part of a tag.")] = "",
               limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSON:
    part = normalise_tag(q.strip().lstrip("#")) if q.strip() else ""
    found = [{"tag": t, "items": n} for t, n in gateway.catalog.tag_counts()
             if not part or part in t]
    return JSON({"tags": found[:limit], "matching": len(found)})


@router.get("/v1/users", response_model=KnownUserList,
            summary="Users of the served bundle: by id prefix, or a random sample")
async def users(gateway: GatewayDep, request: Request,
                q: Annotated[str, Query(max_length=200, description="Start of a user id.")] = "",
                limit: Annotated[int, Query(ge=1, le=200)] = 20,
                random: Annotated[bool, Query(description="A random sample instead.")] = False,
                ) -> JSON:
    cache: KnownUsersCache | None = getattr(request.app.state, "known_users", None)
    if cache is None:
        cache = request.app.state.known_users = KnownUsersCache(gateway.settings.artifacts_dir)
    known = await cache.get(gateway.catalog.version)
    found = known.sample(limit, _rng) if random else known.search(q.strip(), limit)
    return JSON({"users": [{"user_id": u, "interactions": n} for u, n in found],
                 "total": len(known.ids), "bundle": known.version})
