"""POST /admin/reload and PUT /admin/bundles (shared/bundle_admin.py): a bundle whose ranker
cannot be served (RankerLoadError; for a set of bundles also BundleError) is a 422 naming the
field."""

from __future__ import annotations

from services.ranking.deps import get_service
from services.ranking.errors import RankerLoadError
from services.ranking.service import RankingService
from shared.bundle import BundleError
from shared.bundle_admin import bundle_admin_router


def _current(svc: RankingService) -> str | None:
    return svc.info.version if svc.info else None


router = bundle_admin_router(get_service, _current, reload_errors=(RankerLoadError,),
                             bundles_errors=(RankerLoadError, BundleError))
