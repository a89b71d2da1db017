"""The load test and the image's health check, run for real against `vidrec serve` (all parts
in one process) on the real small bundle, loaded into the real Redis under a unique prefix.

Locust runs exactly as the compose `loadtest` service runs it (the locust command with that
service's LOCUST_* / VIDREC_* environment); only the host, the bundle location, the output
files and the duration differ. Any failed request fails the test.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.feature_store.loader import load_bundle
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix

from .manifests import REPO, as_argv, compose, compose_environment, subprocess_env
from .processes import BIN, Process, free_port, http_ok, vidrec_executable, wait_for

pytestmark = pytest.mark.slow

SHARED_REDIS = "redis://127.0.0.1:6379/0"
ADMIN_TOKEN = "test-admin-token"
# What the test changes in the compose service's environment, and nothing else.
LOCUST_OVERRIDES = {"LOCUST_HOST", "LOCUST_LOCUSTFILE", "LOCUST_RUN_TIME", "LOCUST_USERS",
                    "LOCUST_SPAWN_RATE", "LOCUST_CSV", "LOCUST_SUMMARY_JSON",
                    "VIDREC_ARTIFACTS_DIR", "VIDREC_BUNDLE"}


@pytest.fixture(scope="module")
def server(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`vidrec serve all` on a free port, its Redis state under a prefix of its own."""
    tmp = tmp_path_factory.mktemp("smoke")
    prefix = f"vidrec:test:{uuid.uuid4().hex[:12]}"
    settings = Settings(_env_file=None, redis_url=SHARED_REDIS, key_prefix=prefix,
                        artifacts_dir=small_bundle.parent, bundle=small_bundle.name)
    load_bundle(settings, small_bundle.name, progress=False)
    port = free_port()
    env = subprocess_env(
        VIDREC_REDIS_URL=SHARED_REDIS, VIDREC_KEY_PREFIX=prefix,
        VIDREC_ARTIFACTS_DIR=str(small_bundle.parent), VIDREC_BUNDLE=small_bundle.name,
        VIDREC_STATE_DIR=str(tmp / "state"), VIDREC_ADMIN_TOKEN=ADMIN_TOKEN,
        VIDREC_USE_GPU="false",
        # a smoke test of the load-test setup, not of capacity: on a busy shared box 10 users
        # can hold more than the default 8 requests in flight, and the excess would be shed
        VIDREC_MAX_IN_FLIGHT="64")
    proc = Process("vidrec serve all", [vidrec_executable(), "serve", "all", "--host",
                                        "127.0.0.1", "--port", str(port)],
                   env, tmp / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{url}/readyz"), "vidrec serve all ready", proc)
        yield {"url": url, "port": port, "process": proc, "tmp": tmp, "bundle": small_bundle}
    finally:
        proc.stop()
        delete_prefix(settings)


def dockerfile_healthcheck() -> list[str]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    checks = {m for m in re.findall(r"HEALTHCHECK [^\n]*?CMD (\[.*\])", text)}
    assert len(checks) == 1, "gpu and serving images should share one health check"
    return json.loads(checks.pop())


def test_image_healthcheck_command_probes_the_served_port(server: dict) -> None:
    argv = dockerfile_healthcheck()
    assert argv[0] == "python"
    run = [sys.executable, *argv[1:]]
    # inside the image it reads PID 1's command line; here, the server's own
    ok = subprocess.run([*run, f"/proc/{server['process'].pid}/cmdline"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    # and it fails when nothing answers on the port that command line names
    dead = server["tmp"] / "dead-cmdline"
    dead.write_bytes(b"\0".join([b"vidrec", b"serve", b"ranking", b"--port",
                                 str(free_port()).encode()]))
    bad = subprocess.run([*run, str(dead)], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0


def test_compose_healthchecks_pass_against_the_server(server: dict) -> None:
    services = compose()["services"]
    for name in ("gateway", "feature-store", "retrieval", "ranking"):
        argv = as_argv(services[name]["healthcheck"]["test"])
        assert argv[0] == "CMD" and argv[1] == "python", argv
        script = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{server['port']}", argv[3])
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, (name, proc.stderr)


def test_locust_run_has_no_failed_request(server: dict) -> None:
    tmp = server["tmp"]
    base = compose_environment(compose()["services"]["loadtest"])
    overrides = {
        "LOCUST_HOST": server["url"],
        "LOCUST_LOCUSTFILE": str(REPO / "loadtest" / "locustfile.py"),
        "LOCUST_RUN_TIME": "15s",
        "LOCUST_USERS": "10",
        "LOCUST_SPAWN_RATE": "10",
        "LOCUST_CSV": str(tmp / "loadtest"),
        "LOCUST_SUMMARY_JSON": str(tmp / "loadtest.json"),
        "VIDREC_ARTIFACTS_DIR": str(server["bundle"].parent),
        "VIDREC_BUNDLE": server["bundle"].name,
    }
    assert set(overrides) == LOCUST_OVERRIDES and set(base) >= LOCUST_OVERRIDES
    env = subprocess_env(**{**base, **overrides})
    # the locust image's entrypoint is `locust`, and compose gives it no arguments
    assert "command" not in compose()["services"]["loadtest"]
    proc = subprocess.run([str(BIN / "locust")], env=env, capture_output=True, text=True,
                          timeout=90, cwd=tmp)
    summary_path = tmp / "loadtest.json"
    assert summary_path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["failures"] == [], summary["failures"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = summary["total"]
    assert total["failures"] == 0 and total["requests"] >= 20, total
    assert total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"]
    hit = {e["name"]: e["requests"] for e in summary["endpoints"]}
    assert hit.get("/v1/users/{user_id}/recommendations", 0) > 0, hit
    assert hit.get("/v1/events", 0) > 0, hit
    with (tmp / "loadtest_stats.csv").open() as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert {"50%", "95%", "99%", "Requests/s"} <= set(rows["Aggregated"])
