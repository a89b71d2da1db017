"""The bundle admin routes retrieval and ranking share: POST /admin/reload (every replica
follows, shared/rollout.py) and PUT /admin/bundles (experiment arms' bundles beside the main
one). A bundle the service cannot load is a 422 naming the field; the old one keeps serving."""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name
# this factory's local dependency, when the routes are defined.

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request

from shared.admin import Admin, ReloadRequest, ReloadResponse
from shared.contracts import BundlesRequest, BundlesResponse
from shared.errors import InvalidRequest
from shared.rollout import announce


class ServesBundles(Protocol):
    async def reload(self, version: str | None = None) -> str: ...
    async def serve_bundles(self, versions: list[str]) -> dict[str, Any]: ...


ErrorTypes = tuple[type[Exception], ...]


def bundle_admin_router(service: Callable[[Request], Awaitable[ServesBundles]],
                        current: Callable[[Any], str | None], *,
                        reload_errors: ErrorTypes, bundles_errors: ErrorTypes) -> APIRouter:
    """`service`: the app's dependency that gives its service; `current(service)`: the bundle it
    serves now (named in a refused reload); the errors that mean "this bundle cannot be
    served" for a reload and for a set of bundles."""
    router = APIRouter(tags=["admin"], dependencies=[Admin])
    Service = Annotated[ServesBundles, Depends(service)]

    @router.post("/admin/reload")
    async def reload(svc: Service, request: Request,
                     body: ReloadRequest | None = None) -> ReloadResponse:
        try:
            version = await svc.reload(body.bundle if body else None)
        except reload_errors as exc:
            raise InvalidRequest("bundle", f"{exc} (still serving {current(svc)})") from exc
        await announce(request.app, version)  # every replica follows
        return ReloadResponse(bundle=version)

    @router.put("/admin/bundles")
    async def bundles(body: BundlesRequest, svc: Service) -> BundlesResponse:
        """Serve exactly these bundles besides the main one (experiment arms)."""
        try:
            return BundlesResponse(**await svc.serve_bundles(body.bundles))
        except bundles_errors as exc:
            raise InvalidRequest("bundles", str(exc)) from exc

    return router
