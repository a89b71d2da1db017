"""POST /admin/reload and PUT /admin/bundles (shared/bundle_admin.py): a bundle retrieval cannot
load (BundleError) is a 422 naming the field."""

from __future__ import annotations

from services.retrieval.deps import get_service
from services.retrieval.service import RetrievalService
from shared.bundle import BundleError
from shared.bundle_admin import bundle_admin_router


def _current(svc: RetrievalService) -> str | None:
    bundle = svc.readiness().get("bundle")
    return None if bundle is None else str(bundle)


router = bundle_admin_router(get_service, _current, reload_errors=(BundleError,),
                             bundles_errors=(BundleError,))
