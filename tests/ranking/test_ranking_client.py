"""RankingClient failure mapping against real sockets: refused, silent, 5xx, 4xx, bad counts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.ranking.client import RankingClient
from services.ranking.errors import ScoreCountMismatch, ScoreRequestRejected
from shared.contracts import ScoreItem, ServiceUnavailable
from tests.support import free_port

REQ = [ScoreItem(history=["a"], candidates=["b", "c"])]


def call(client: RankingClient, requests: list[ScoreItem] = REQ):
    async def go():
        try:
            return await client.score(requests)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def answering() -> Iterator[callable]:
    """Start a real HTTP server that answers every POST with the given status and body."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: dict) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_dead_server_is_service_unavailable() -> None:
    client = RankingClient(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(ServiceUnavailable):
        call(client)
    assert asyncio.run(RankingClient(f"http://127.0.0.1:{free_port()}", 1.0).ready()) is False


def test_silent_server_times_out_as_service_unavailable() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = RankingClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.2)
        with pytest.raises(ServiceUnavailable, match="timed out"):
            call(client)


def test_5xx_is_service_unavailable(answering) -> None:
    url = answering(503, {"detail": "no model"})
    with pytest.raises(ServiceUnavailable, match="503") as info:
        call(RankingClient(url, timeout_s=1.0))
    assert type(info.value) is ServiceUnavailable


def test_4xx_is_a_rejection_that_callers_can_still_degrade_on(answering) -> None:
    url = answering(422, {"detail": "bad"})
    with pytest.raises(ScoreRequestRejected, match="422"):
        call(RankingClient(url, timeout_s=1.0))
    assert issubclass(ScoreRequestRejected, ServiceUnavailable)


def test_wrong_number_of_scores_is_a_typed_failure(answering) -> None:
    url = answering(200, {"scores": [[0.5]], "model_version": "v"})
    with pytest.raises(ScoreCountMismatch):
        call(RankingClient(url, timeout_s=1.0))


def test_malformed_answer_is_service_unavailable(answering) -> None:
    url = answering(200, {"nope": 1})
    with pytest.raises(ServiceUnavailable, match="malformed"):
        call(RankingClient(url, timeout_s=1.0))


def test_good_answer_passes_through(answering) -> None:
    url = answering(200, {"scores": [[0.5, -1.0]], "model_version": "v1"})
    assert call(RankingClient(url, timeout_s=1.0)) == ([[0.5, -1.0]], "v1")
