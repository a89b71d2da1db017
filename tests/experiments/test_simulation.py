"""bench/simulate.py on the small test bundle: real server process, Redis, HTTP, events with
request ids. The numbers the server reports per arm must equal what the simulated users did."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench.simulate import CONTROL, MODEL, Noise, run
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix


def test_small_simulation_counts_match(small_bundle: Path, data_dir: Path,
                                       tmp_path: Path) -> None:
    prefix = f"vidrec:test:{uuid.uuid4().hex}"
    try:
        result = run(small_bundle, data_dir, users=0, k=10, weights=(50.0, 50.0),
                     noise=Noise(), seed=3, concurrency=4,
                     redis_url=Settings().redis_url, key_prefix=prefix, workdir=tmp_path)
    finally:
        delete_prefix(Settings(key_prefix=prefix))
    checks, sim = result["checks"], result["simulator"]
    assert checks["server_counts_equal_simulator"], (sim, result["report"]["arms"])
    assert checks["no_failed_requests"] and sim["degraded_answers"] == 0
    assert sum(sim["users"].values()) == result["users_simulated"] == 120
    # 120 users, 50/50: each arm gets a fair share (the 1 pp check needs the full run)
    assert all(d < 10 for d in checks["split_deviation_pp"].values())
    arms = {a["arm"]: a for a in result["report"]["arms"]}
    for arm in (CONTROL, MODEL):
        assert arms[arm]["ctr"]["value"] == pytest.approx(
            sim["clicked"].get(arm, 0) / sim["users"][arm], abs=1e-6)
        assert result["ctr_vs_offline"][arm]["offline_HR@10"] is not None
    assert arms[MODEL]["vs_control"]["ctr"]["p_value"] is not None
