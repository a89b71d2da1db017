"""FastAPI dependencies: the live gateway, the admin check, request-tag parsing."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.gateway import Gateway
from shared.data.types import normalise_tag


async def get_gateway(request: Request) -> Gateway:
    # async: FastAPI would run a plain def dependency in a worker thread, on every request
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

_bearer = HTTPBearer(auto_error=False, description="settings.admin_token (VIDREC_ADMIN_TOKEN)")


async def require_admin(gateway: GatewayDep,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    token = gateway.settings.admin_token
    if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin bearer token required",
                            headers={"WWW-Authenticate": "Bearer"})


Admin = Depends(require_admin)


def parse_tags(values: list[str] | None) -> list[str]:
    """`?tags=a&tags=b` or `?tags=a,b`, with or without '#', any case -> ['a', 'b']."""
    out: dict[str, None] = {}
    for value in values or ():
        for part in value.split(","):
            tag = normalise_tag(part.lstrip().lstrip("#"))
            if tag:
                out[tag] = None
    return list(out)
