"""Requests per route on /metrics: `vidrec_http_requests_total{service, route, status}` and
`vidrec_http_request_seconds{service, route}` (what the console's requests/s and error charts
read).

A pure ASGI middleware (no BaseHTTPMiddleware: that one wraps every response in a stream and
costs far more). The route label is the route's path template (`/v1/users/{user_id}/history`),
never the raw path, so user and item ids cannot blow up the label set; requests no route
matched count as `unmatched`.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.observability import _BUCKETS

HTTP_REQUESTS = Counter("vidrec_http_requests_total",
                        "HTTP requests answered, by route and status.",
                        ["service", "route", "status"])
HTTP_SECONDS = Histogram("vidrec_http_request_seconds", "HTTP request time, by route.",
                         ["service", "route"], buckets=_BUCKETS)
UNMATCHED = "unmatched"


class RequestMetrics:
    def __init__(self, app: ASGIApp, service: str = "gateway") -> None:
        self.app = app
        self.service = service
        self._paths: dict[Any, str] = {}  # endpoint -> path template, filled on first use
        # The labelled children, looked up once: .labels() takes a lock and validates the
        # labels on every call, several times the cost of the increment itself.
        self._counts: dict[tuple[str, int], Any] = {}
        self._seconds: dict[str, Any] = {}

    def _route_of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return str(route.path)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        path = self._paths.get(endpoint)
        if path is None:
            router = scope.get("router")
            for r in getattr(router, "routes", ()):
                if getattr(r, "endpoint", None) is endpoint or getattr(r, "app", None) is endpoint:
                    path = r.path
                    break
            path = self._paths[endpoint] = path or UNMATCHED
        return path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes the app is answered 500 by the server

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = self._route_of(scope)
            count = self._counts.get((route, status))
            if count is None:
                count = self._counts[(route, status)] = HTTP_REQUESTS.labels(
                    self.service, route, str(status))
            seconds = self._seconds.get(route)
            if seconds is None:
                seconds = self._seconds[route] = HTTP_SECONDS.labels(self.service, route)
            count.inc()
            seconds.observe(time.perf_counter() - start)
