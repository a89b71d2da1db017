"""`RankingClient`: `RankingAPI` over HTTP, for a gateway that runs apart from the ranking service.

One keep-alive `httpx.AsyncClient` is shared by every call. Anything that keeps the service
from answering (refused connection, timeout, broken connection, 5xx) raises
`ServiceUnavailable`; a 4xx raises its subclass `ScoreRequestRejected`; an answer with the wrong
number of scores raises `ScoreCountMismatch` (also a subclass), so a caller's degrade policy
covers every failure with one except clause.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from services.ranking.errors import ScoreCountMismatch, ScoreRequestRejected
from shared.contracts import ScoreItem, ScoreRequest, ScoreResponse, ServiceUnavailable
from shared.http_client import is_ready, request


class RankingClient:
    def __init__(self, base_url: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport,
            limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=30.0))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(self, requests: list[ScoreItem],
                    bundle: str | None = None) -> tuple[list[list[float]], str]:
        answer = await self.score_detailed(requests, bundle)
        return answer.scores, answer.model_version

    async def score_detailed(self, requests: list[ScoreItem], bundle: str | None = None,
                             features: bool = False) -> ScoreResponse:
        body = ScoreRequest(requests=requests, bundle=bundle,
                            features=features).model_dump_json(exclude_none=True)
        response = await self._send("POST", "/v1/score", content=body,
                                    headers={"content-type": "application/json"})
        try:
            answer = ScoreResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServiceUnavailable(f"ranking at {self.base_url}: malformed answer") from exc
        if len(answer.scores) != len(requests) or any(
                len(s) != len(r.candidates)
                for s, r in zip(answer.scores, requests, strict=True)):
            raise ScoreCountMismatch(f"ranking at {self.base_url}: scores do not line up "
                                     "with the candidates")
        return answer

    async def ready(self) -> bool:
        return await is_ready(self._http)

    async def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        response = await request(self._http, method, url, f"ranking at {self.base_url}",
                                 **kwargs)
        if response.status_code >= 500:
            raise ServiceUnavailable(f"ranking at {self.base_url}: HTTP {response.status_code} "
                                     f"{response.text[:300]}")
        if response.status_code >= 400:
            raise ScoreRequestRejected(f"ranking at {self.base_url}: HTTP "
                                       f"{response.status_code} {response.text[:300]}")
        return response
