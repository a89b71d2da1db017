"""The ranking app end to end: a real uvicorn process on a free port, the real small bundle,
RankingClient over real HTTP, admin auth, start-up refusal of a mismatched model."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.ranking.client import RankingClient
from services.ranking.scorer import OnnxRanker
from shared.bundle import Bundle
from shared.contracts import ScoreItem, ServiceUnavailable
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix
from tests.support import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
LAUNCH = ("import sys, uvicorn; from services.ranking.app import create_app; "
          "from shared.settings import Settings; "
          "uvicorn.run(create_app(Settings()), host='127.0.0.1', port=int(sys.argv[1]), "
          "log_level='warning')")


# Each server's key prefix in the shared Redis: its rollout follower writes the bundle it serves
# there at start-up (shared/rollout.py), and the module's teardown deletes what they wrote.
PREFIXES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _forget_server_keys() -> Iterator[None]:
    yield
    for prefix in PREFIXES:
        delete_prefix(Settings(key_prefix=prefix))


def start_server(artifacts: Path, bundle: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    PREFIXES.append(f"vidrec:test:{uuid.uuid4().hex}")
    env = {**os.environ, "VIDREC_ARTIFACTS_DIR": str(artifacts), "VIDREC_BUNDLE": bundle,
           "VIDREC_ADMIN_TOKEN": TOKEN, "VIDREC_USE_GPU": "false",
           "VIDREC_ORT_INTRA_THREADS": "1", "VIDREC_KEY_PREFIX": PREFIXES[-1]}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.fixture(scope="module")
def artifacts(small_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    for version in ("http-a", "http-b"):
        (root / version).mkdir()
        for f in Path(small_bundle).iterdir():
            (root / version / f.name).symlink_to(f.resolve())
    return root


@pytest.fixture(scope="module")
def server(artifacts: Path) -> Iterator[str]:
    proc, url = start_server(artifacts, "http-a")
    try:
        wait_ready(proc, url)
        yield url
    finally:
        stop_process(proc)


def requests_for(bundle: Bundle) -> list[ScoreItem]:
    users = [s for s in bundle.users().values() if len(s) >= 3][:4]
    ids = [it["item_id"] for it in bundle.items]
    return [ScoreItem(history=u[:-1], candidates=ids[i: i + 10 * (i + 1)] + ["not-in-bundle"])
            for i, u in enumerate(users)]


def test_client_scores_over_http_like_the_scorer(server, artifacts, make_settings) -> None:
    bundle = Bundle(artifacts / "http-a")
    reqs = requests_for(bundle)

    async def go():
        client = RankingClient(server, timeout_s=5.0)
        try:
            assert await client.ready() is True
            first = await client.score(reqs)
            second = await client.score(reqs[:1])  # same keep-alive connection
            return first, second
        finally:
            await client.aclose()

    (scores, version), (one, _) = asyncio.run(go())
    assert version == "http-a"
    expected = OnnxRanker(bundle, make_settings(artifacts, "http-a")).score(
        [r.history for r in reqs], [r.candidates for r in reqs])
    for got, want in zip(scores, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one[0], scores[0], rtol=1e-5, atol=1e-5)


def test_bad_requests_get_a_422_naming_the_field(server) -> None:
    r = httpx.post(f"{server}/v1/score", json={"requests": [{"history": []}]})
    assert r.status_code == 422
    assert "candidates" in r.text
    r = httpx.post(f"{server}/v1/score", json={"requests": []})
    assert r.status_code == 422 and "requests" in r.text


def test_readyz_and_metrics(server) -> None:
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["ready"] is True and ready["model_version"] in {"http-a", "http-b"}
    assert ready["provider"] == "CPU"
    assert ready["intra_threads"] == 1 and ready["inter_threads"] == 1
    httpx.post(f"{server}/v1/score", json={"requests": [{"history": [], "candidates": ["x"]}]})
    metrics = httpx.get(f"{server}/metrics").text
    assert 'vidrec_stage_seconds_count{service="ranking",stage="score"}' in metrics
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}


def test_admin_reload_needs_the_token(server) -> None:
    url = f"{server}/admin/reload"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(url, headers=auth, json={"bundle": "http-b"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"bundle": "http-b"}
    assert httpx.get(f"{server}/readyz").json()["model_version"] == "http-b"

    r = httpx.post(url, headers=auth, json={"bundle": "missing-bundle"}, timeout=30)
    assert r.status_code == 422 and "still serving http-b" in r.text
    r = httpx.post(url, headers=auth, json={"bundle": "../http-a"})
    assert r.status_code == 422  # a version is a folder name, never a path
    r = httpx.post(url, headers=auth, timeout=30)  # no body: VIDREC_BUNDLE again
    assert r.status_code == 200 and r.json() == {"bundle": "http-a"}


def test_client_maps_a_stopped_server_to_service_unavailable(artifacts) -> None:
    proc, url = start_server(artifacts, "http-a")
    try:
        wait_ready(proc, url)
    finally:
        stop_process(proc)

    async def go():
        client = RankingClient(url, timeout_s=2.0)
        try:
            assert await client.ready() is False
            await client.score([ScoreItem(history=[], candidates=["x"])])
        finally:
            await client.aclose()

    with pytest.raises(ServiceUnavailable):
        asyncio.run(go())


def test_server_refuses_to_start_on_a_mismatched_model(small_bundle, tmp_path,
                                                       onnx_model, copy_bundle) -> None:
    e = Bundle(Path(small_bundle)).content_embeddings().shape[1]
    bad = onnx_model(e, rename={"cand_content": "candidate_content"})
    copy_bundle(Path(small_bundle), tmp_path / "artifacts", "bad", {"ranker.onnx": bad})
    proc, _ = start_server(tmp_path / "artifacts", "bad")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode != 0
    assert "ModelSchemaMismatch" in err and "candidate_content" in err
