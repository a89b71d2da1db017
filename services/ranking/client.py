"""`RankingClient`: `RankingAPI` over HTTP, for a gateway that runs apart from the ranking service.

Anything that keeps the service from answering (refused connection, timeout, broken connection,
5xx) raises `ServiceUnavailable` (shared/http_client.py); any other 4xx raises its subclass
`ScoreRequestRejected`; an answer with the wrong number of scores raises `ScoreCountMismatch`
(also a subclass), so a caller's degrade policy covers every failure with one except clause.
"""

from __future__ import annotations

from typing import ClassVar

import httpx

from services.ranking.errors import ScoreCountMismatch, ScoreRequestRejected
from shared.contracts import ScoreItem, ScoreRequest, ScoreResponse
from shared.http_client import BASE_STATUS_ERRORS, ErrorFactory, Failed, ServiceClient


def _rejected(f: Failed) -> Exception:
    return ScoreRequestRejected(f.message)


class RankingClient(ServiceClient):
    SERVICE = "ranking"
    # every 4xx but the shared ones (admin, 409) is a request we built wrong
    STATUS_ERRORS: ClassVar[dict[int, ErrorFactory]] = {
        code: _rejected for code in range(400, 500) if code not in BASE_STATUS_ERRORS}

    def __init__(self, base_url: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, timeout_s, transport=transport)

    async def score(self, requests: list[ScoreItem],
                    bundle: str | None = None) -> tuple[list[list[float]], str]:
        answer = await self.score_detailed(requests, bundle)
        return answer.scores, answer.model_version

    async def score_detailed(self, requests: list[ScoreItem], bundle: str | None = None,
                             features: bool = False) -> ScoreResponse:
        response = await self.send("POST", "/v1/score", body=ScoreRequest(
            requests=requests, bundle=bundle, features=features))
        answer = self.parse(ScoreResponse, response)
        if len(answer.scores) != len(requests) or any(
                len(s) != len(r.candidates)
                for s, r in zip(answer.scores, requests, strict=True)):
            raise ScoreCountMismatch(f"{self.where}: scores do not line up with the candidates")
        return answer
