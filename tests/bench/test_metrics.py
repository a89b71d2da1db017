"""bench/metrics.py reads one sample off a real service's /metrics (uvicorn over HTTP): the
gateway's admission limit picked by some of its labels, and None when absent."""

from __future__ import annotations

from fastapi import FastAPI

from bench.metrics import sample
from shared.admission import add_admission
from shared.observability import add_ops_routes
from shared.settings import Settings
from tests.gateway.conftest import serving


def test_a_sample_by_name_and_some_of_its_labels() -> None:
    app = FastAPI()

    async def ready() -> dict:
        return {"ready": True}

    add_ops_routes(app, ready)
    add_admission(app, Settings(max_in_flight=5, admission_limit="fixed"), "gateway")
    with serving(app) as base:
        url = f"{base}/metrics"
        assert sample(url, "vidrec_admission_limit", service="gateway") == 5
        assert sample(url, "vidrec_admission_limit", service="ranking") is None
        assert sample(url, "vidrec_no_such_metric") is None
