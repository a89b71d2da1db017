"""Fixtures of the container tests: the engine (required in CI, optional elsewhere), the images
built from the real Dockerfile, and the real docker-compose.yml brought up under its own project
name, torn down with `down -v` whatever happens.

CI (.ci/run) starts the engine and the base images and sets VIDREC_REQUIRE_CONTAINERS=1, so a
missing engine FAILS there; elsewhere these tests skip and say how to run them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR
from tests.support import free_port

from .stack import HOW_TO_RUN, REPO, Stack, docker, engine_problem, engine_versions

REQUIRED = os.environ.get("VIDREC_REQUIRE_CONTAINERS") == "1"
RESULTS = REPO / "bench" / "results" / "containers.json"
SERVING_IMAGE, BUILD_IMAGE = "vidrec:0.1.0", "vidrec-build:0.1.0"


@pytest.fixture(scope="session")
def engine() -> dict[str, str]:
    problem = engine_problem()
    if problem:
        if REQUIRED:
            pytest.fail(f"VIDREC_REQUIRE_CONTAINERS=1 but {problem}. {HOW_TO_RUN}")
        pytest.skip(f"{problem}. {HOW_TO_RUN}")
    return engine_versions()


# package scope: torn down after the last container test, so total_s is this folder's own time
@pytest.fixture(scope="package")
def results(engine: dict[str, str]) -> Iterator[dict]:
    """What the run measured; written to bench/results/containers.json at the end."""
    out: dict = {"engine": engine, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.monotonic()
    yield out
    out["total_s"] = round(time.monotonic() - start, 1)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


def stage_torch_wheel() -> str:
    """Put the CPU torch wheel the Dockerfile pins into ./wheels (wheels/README.md), taken the
    way pip on this machine finds it (here: its find-links wheel folder). Where pip cannot, the
    build falls back to PyTorch's CPU index."""
    pin = re.search(r"torch==(\S+)", (REPO / "Dockerfile").read_text()).group(1)
    wheels = REPO / "wheels"
    if any(wheels.glob(f"torch-{pin}-*.whl")):
        return "wheels/ (already there)"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                           "--dest", str(wheels), f"torch=={pin}"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return "wheels/ (pip download)"
    return f"PyTorch's CPU index (pip download failed: {proc.stderr.strip()[-200:]})"


def compose_env(**extra: str) -> dict[str, str]:
    """The test process's environment without VIDREC_* settings, plus compose variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    env.update({"VIDREC_ADMIN_TOKEN": secrets.token_hex(16),
                "VIDREC_DATA_HOST_DIR": str(DATA_DIR),
                # The stack's checks (locust's 10 users included) test wiring, not capacity:
                # the gateway's admission bound must not refuse them on a busy 2-core box.
                "VIDREC_MAX_IN_FLIGHT": "64"}, **extra)
    return env


def image_size_mb(name: str) -> float:
    return round(int(docker("image", "inspect", name, "--format", "{{.Size}}").stdout) / 1e6, 1)


@pytest.fixture(scope="package")
def images(engine: dict[str, str], results: dict) -> dict[str, float]:
    """`docker compose build`: the serving and build images from the real Dockerfile."""
    results["torch_wheel_from"] = stage_torch_wheel()
    stack = Stack(project=f"vidrec-ci-{os.getpid()}", env=compose_env(), port=0)
    stack.timed("build_s", "--progress", "plain", "build", timeout=1200)
    sizes = {SERVING_IMAGE: image_size_mb(SERVING_IMAGE), BUILD_IMAGE: image_size_mb(BUILD_IMAGE)}
    results["images_mb"] = sizes
    results["build_s"] = stack.timings["build_s"]
    return sizes


@pytest.fixture(scope="module")
def stack(images: dict[str, float], results: dict, small_bundle: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole docker-compose.yml up (`up -d --wait`), its bundle job given the small test
    bundle through VIDREC_BUNDLE_HOST_DIR; `down -v` afterwards even when a step failed."""
    loadtest_dir = tmp_path_factory.mktemp("loadtest")
    loadtest_dir.chmod(0o777)  # locust's image runs as its own uid
    port = free_port()
    stack = Stack(project=f"vidrec-ci-{os.getpid()}", port=port, env=compose_env(
        VIDREC_PORT=str(port), VIDREC_BUNDLE_HOST_DIR=str(small_bundle.parent),
        LOADTEST_RESULTS_DIR=str(loadtest_dir)))
    try:
        try:
            stack.timed("up_s", "up", "-d", "--wait", "--wait-timeout", "300", timeout=420)
        except AssertionError as exc:
            logs = stack.compose("logs", "--tail", "30", check=False).stdout
            raise AssertionError(f"{exc}\n--- docker compose logs ---\n{logs[-8000:]}") from None
        results["up_s"] = stack.timings["up_s"]
        yield stack
    finally:
        stack.compose("--profile", "loadtest", "down", "-v", "-t", "1", "--remove-orphans",
                      check=False, timeout=180)
