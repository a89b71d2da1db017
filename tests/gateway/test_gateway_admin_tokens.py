"""A wrong or missing admin token is a 401/403 everywhere, never a 503 "retry shortly": at the
gateway itself, and when a service behind it (real retrieval over HTTP) refuses the token the
gateway sends because the two were configured with different VIDREC_ADMIN_TOKENs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.gateway.conftest import ADMIN_TOKEN


@pytest.fixture(scope="module")
def mismatched(gw_settings: Settings, serve_app, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[str]:
    """A gateway whose retrieval (its own uvicorn, real HTTP) has another admin token."""
    from services.gateway.app import create_app as gateway_app
    from services.retrieval.app import create_app as retrieval_app

    state = Path(tmp_path_factory.mktemp("retrieval-state"))
    retrieval = gw_settings.model_copy(update={"admin_token": "the-retrieval-token",
                                                "state_dir": state})
    with serve_app(retrieval_app(retrieval)) as retrieval_url:
        gateway = gw_settings.model_copy(update={"retrieval_url": retrieval_url})
        with serve_app(gateway_app(gateway)) as base:
            yield base


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/items/token-test", {"title": "t", "embedding": [1.0]}),
    ("DELETE", "/v1/items/token-test", None),
    ("POST", "/admin/reload", None),
])
def test_the_gateway_checks_its_own_token(live: str, method: str, path: str,
                                          body: dict | None) -> None:
    missing = httpx.request(method, f"{live}{path}", json=body, timeout=30)
    wrong = httpx.request(method, f"{live}{path}", json=body, timeout=30,
                          headers={"Authorization": "Bearer wrong"})
    assert (missing.status_code, wrong.status_code) == (401, 403)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.json() == {"detail": "wrong admin token"}


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/items/token-test", {"title": "a new video", "tags": ["x"]}),
    ("DELETE", "/v1/items/token-test", None),
    ("POST", "/admin/reload", None),
])
def test_a_service_refusing_the_gateways_token_is_403_not_503(
        mismatched: str, method: str, path: str, body: dict | None) -> None:
    r = httpx.request(method, f"{mismatched}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 403, r.text
    assert "retry-after" not in r.headers
    assert "VIDREC_ADMIN_TOKEN" in r.json()["detail"]
