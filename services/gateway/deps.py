"""FastAPI dependencies: the live gateway, the admin check, request-tag parsing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.gateway import Gateway
from shared.admin import Admin as SharedAdmin
from shared.data.types import normalise_tag


async def get_gateway(request: Request) -> Gateway:
    # async: FastAPI would run a plain def dependency in a worker thread, on every request
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

# the admin check shared by every service (401 without a token, 403 with a wrong one)
Admin = SharedAdmin


def parse_tags(values: list[str] | None) -> list[str]:
    """`?tags=a&tags=b` or `?tags=a,b`, with or without '#', any case -> ['a', 'b']."""
    out: dict[str, None] = {}
    for value in values or ():
        for part in value.split(","):
            tag = normalise_tag(part.lstrip().lstrip("#"))
            if tag:
                out[tag] = None
    return list(out)
