"""What every service's admin routes share: the bearer-token check and the reload body."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="settings.admin_token (VIDREC_ADMIN_TOKEN)")


async def require_admin(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """The one admin check of every service: 401 without a bearer token, 403 with a wrong one.
    The token is the app's settings' (`app.state.settings`, set by each create_app)."""
    settings: Settings = request.app.state.settings
    if creds is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin bearer token required",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(creds.credentials.encode(), settings.admin_token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")


# `dependencies=[Admin]` on a route or router
Admin = Depends(require_admin)


# A bundle version is a folder name under artifacts_dir, never a path (no "/", no leading ".").
VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$"


class ReloadRequest(BaseModel):
    bundle: str | None = Field(None, pattern=VERSION_PATTERN,
                               description="Bundle version to load (default: VIDREC_BUNDLE).")


class ReloadResponse(BaseModel):
    bundle: str
