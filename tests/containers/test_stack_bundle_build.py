"""The compose bundle job's other path, for real: no bundle on the host, so `vidrec build` runs
inside the `build` image (CPU torch, the text encoder package) on ml-latest-small, writes the
artifacts volume and `vidrec load`s Redis. A project of its own, with its own volumes; it runs
after test_stack.py (file order) so that the stack's checks report first."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import SMALL_DATASET, SMALL_USERS

from .conftest import compose_env
from .stack import Stack

pytestmark = pytest.mark.timeout(900)


def test_bundle_job_builds_a_bundle_in_the_build_image(
        images: dict[str, float], results: dict, tmp_path) -> None:
    no_host_bundle = tmp_path / "empty"
    no_host_bundle.mkdir()
    # the test bundle's dataset and sample; one epoch: this proves the path, not the model
    build_args = f"--dataset {SMALL_DATASET} --sample-users {SMALL_USERS} --epochs 1 " \
                 "--version in-image"
    stack = Stack(project=f"vidrec-ci-build-{os.getpid()}", port=0, env=compose_env(
        VIDREC_BUNDLE_HOST_DIR=str(no_host_bundle), VIDREC_BUILD_ARGS=build_args))
    try:
        start = time.monotonic()
        job = stack.compose("run", "--rm", "bundle", timeout=900)
        results["bundle_build_in_image"] = {"args": build_args,
                                            "seconds": round(time.monotonic() - start, 1)}
        assert "[build] bundle" in job.stdout + job.stderr, job.stdout[-3000:]
        manifest = stack.compose(
            "run", "--rm", "--no-deps", "--entrypoint", "sh", "bundle", "-c",
            'cat "$VIDREC_ARTIFACTS_DIR/$VIDREC_BUNDLE/manifest.json"').stdout
        built = json.loads(manifest)
        assert built["version"] == "in-image" and built["dataset_arg"] == SMALL_DATASET, built
        assert built["files"], built
        keys = stack.compose("exec", "-T", "redis", "redis-cli", "dbsize").stdout
        assert int(keys.strip()) > 0, "`vidrec load` wrote nothing"
    finally:
        stack.compose("down", "-v", "-t", "1", "--remove-orphans", check=False, timeout=180)
