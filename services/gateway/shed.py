"""What a recommendation request refused by admission control gets when
VIDREC_SHED_RECOMMENDATIONS=popular: the bundle's popular list, from memory, flagged
`degraded: ["admission"]` (about a tenth of a millisecond, no dependency called). Every other
shed request, and every shed request with the default setting, gets 503 + Retry-After."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import orjson

from services.gateway.catalog import Catalog

_RECOMMENDATIONS = re.compile(r"^/v1/users/(?P<user>.+)/recommendations$")
DEFAULT_K, MAX_K = 20, 100


async def popular_answer(scope: dict[str, Any]) -> tuple[int, bytes] | None:
    """(200, body) for GET /v1/users/{id}/recommendations, None for anything else."""
    match = _RECOMMENDATIONS.match(scope["path"])
    if scope["method"] != "GET" or match is None:
        return None
    gateway = getattr(scope["app"].state, "gateway", None)
    if gateway is None:
        return None
    catalog: Catalog = gateway.catalog
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        k = min(MAX_K, max(1, int(query.get("k", [DEFAULT_K])[0])))
    except ValueError:
        return None  # let the 503 answer; a retry will get the 422
    picks = catalog.popular_candidates(k, frozenset(query.get("exclude", ())))
    items = []
    for c in picks:
        meta = catalog.meta[c.item_id]
        items.append({"item_id": c.item_id, "title": meta.title, "tags": meta.tags,
                      "score": c.score, "reasons": ["popular now"]})
    return 200, orjson.dumps({"user_id": match.group("user"), "items": items,
                              "model_version": catalog.version, "degraded": ["admission"]})
