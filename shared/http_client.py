"""What the services' HTTP clients share: one way to turn a failed request into
`ServiceUnavailable`, and the readiness probe."""

from __future__ import annotations

import httpx

from shared.contracts import ServiceUnavailable


async def request(http: httpx.AsyncClient, method: str, url: str, where: str,
                  **kwargs) -> httpx.Response:
    """Send; a refused or broken connection or a timeout raises ServiceUnavailable. The
    caller decides what each status code means."""
    try:
        return await http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise ServiceUnavailable(f"{where}: timed out ({exc!r})") from exc
    except httpx.TransportError as exc:
        raise ServiceUnavailable(f"{where}: {exc!r}") from exc


async def is_ready(http: httpx.AsyncClient) -> bool:
    try:
        response = await http.get("/readyz")
    except httpx.HTTPError:
        return False
    return response.status_code == 200
