"""An experiment arm's per-source caps are held, when the file is loaded, to what retrieval
accepts (shared/sources.MAX_CANDIDATES_PER_SOURCE): a cap above it is refused at start and on
POST /admin/experiments/reload, naming the experiment, arm and source, instead of reaching
retrieval and degrading every answer of the arm. Real gateway (bundle, Redis, FAISS, ONNX),
driven in-process through Starlette's TestClient (no port to pick)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.feature_store.loader import load_bundle
from shared.bundle import Bundle
from shared.settings import Settings
from shared.sources import MAX_CANDIDATES_PER_SOURCE
from tests.gateway.conftest import delete_prefix, gateway_settings

EXPERIMENT = """\
[experiments.caps]
control = "base"

[experiments.caps.arms.base]
weight = 1

[experiments.caps.arms.wide]
weight = 1
candidates = {{ ann = {ann} }}
"""
REFUSED = (f"line 9: experiments.caps.arms.wide.candidates.ann: must be an integer between 0 "
           f"and {MAX_CANDIDATES_PER_SOURCE}, got {MAX_CANDIDATES_PER_SOURCE + 1}")


@pytest.fixture()
def started(small_bundle: Path, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    exp_file = tmp_path / "experiments.toml"
    settings = gateway_settings(small_bundle, tmp_path / "state", experiments_file=exp_file,
                                experiments_check_s=0)  # reloads only when asked
    load_bundle(settings, settings.bundle, progress=False)
    try:
        yield settings, exp_file
    finally:
        delete_prefix(settings)


def _user(small_bundle: Path) -> str:
    return sorted(Bundle(small_bundle).users())[0]


def test_a_cap_too_high_at_start_runs_no_experiment_and_says_why(
        started: tuple[Settings, Path], small_bundle: Path) -> None:
    from services.gateway.app import create_app

    settings, exp_file = started
    exp_file.write_text(EXPERIMENT.format(ann=MAX_CANDIDATES_PER_SOURCE + 1))
    with TestClient(create_app(settings)) as client:
        status = client.get("/v1/experiments").json()
        assert status["active"] is None
        assert status["error"] == f"{exp_file}, {REFUSED}"
        body = client.get(f"/v1/users/{_user(small_bundle)}/recommendations").json()
        assert body["experiment"] is None and body["degraded"] == []


def test_reload_refuses_a_cap_too_high_and_the_bound_serves(
        started: tuple[Settings, Path], small_bundle: Path, admin: dict[str, str]) -> None:
    from services.gateway.app import create_app

    settings, exp_file = started
    user = _user(small_bundle)
    exp_file.write_text(EXPERIMENT.format(ann=MAX_CANDIDATES_PER_SOURCE))
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/experiments").json()["active"] == "caps"
        # the highest cap the file accepts is one retrieval accepts: the arm is not degraded
        r = client.get(f"/v1/users/{user}/recommendations", headers={"X-Vidrec-Arm": "wide"})
        assert r.status_code == 200 and r.json()["arm"] == "wide", r.text
        assert r.json()["degraded"] == [] and r.json()["items"]

        exp_file.write_text(EXPERIMENT.format(ann=MAX_CANDIDATES_PER_SOURCE + 1))
        r = client.post("/admin/experiments/reload", headers=admin)
        assert r.status_code == 400  # every refused file answers 400 (docs/experiments.md)
        assert r.json()["detail"] == f"{exp_file}, {REFUSED}"
        # the previous configuration keeps serving
        status = client.get("/v1/experiments").json()
        assert status["active"] == "caps" and status["error"] == f"{exp_file}, {REFUSED}"
        r = client.get(f"/v1/users/{user}/recommendations", headers={"X-Vidrec-Arm": "wide"})
        assert r.json()["arm"] == "wide" and r.json()["degraded"] == []
