"""What every service's admin routes share: the bearer-token check and the reload body."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def require_admin(settings: Settings) -> Callable[..., None]:
    """Dependency: 401 without a bearer token, 403 with a wrong one."""

    def check(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if creds is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin token required",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(creds.credentials.encode(), settings.admin_token.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")

    return check


# A bundle version is a folder name under artifacts_dir, never a path (no "/", no leading ".").
VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$"


class ReloadRequest(BaseModel):
    bundle: str | None = Field(None, pattern=VERSION_PATTERN,
                               description="Bundle version to load (default: VIDREC_BUNDLE).")


class ReloadResponse(BaseModel):
    bundle: str
