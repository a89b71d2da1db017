"""Rollout to every replica, over real processes: two gateways, two retrieval and two ranking
services (each gateway reaching its own pair over HTTP), their own redis-server, steady load.
/admin/reload on ONE gateway moves all six to the new bundle within 10 s, `vidrec rollback`
moves them back, and a bundle no replica can load leaves every one serving the old bundle and
saying so, all without a failed request. Every process is stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.feature_store.loader import load_bundle
from shared.bundle import Bundle
from shared.settings import Settings
from tests.deploy.processes import vidrec_executable
from tests.support import free_port
from tests.test_multiprocess import ADMIN, Cluster, wait_until

pytestmark = pytest.mark.slow
FOLLOW_WITHIN_S = 10.0


def _versions(urls: dict[str, str]) -> dict[str, str | None]:
    out = {}
    for name, url in urls.items():
        body = httpx.get(f"{url}/readyz", timeout=5).json()
        out[name] = body.get("bundle") or body.get("model_version")
    return out


def _all_on(urls: dict[str, str], version: str) -> float:
    start = time.monotonic()
    wait_until(lambda: set(_versions(urls).values()) == {version}, f"all on {version}",
               FOLLOW_WITHIN_S)
    return time.monotonic() - start


def test_promote_and_rollback_reach_every_replica_under_load(
        small_bundle: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for version in ("v1", "v2"):
        shutil.copytree(small_bundle, artifacts / version)
    (artifacts / "broken").mkdir()
    (artifacts / "broken" / "manifest.json").write_text(json.dumps({"version": "broken"}))

    redis_port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")},
           "PATH": f"{Path(vidrec_executable()).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1",
           "VIDREC_ARTIFACTS_DIR": str(artifacts), "VIDREC_BUNDLE": "v1",
           "VIDREC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "VIDREC_KEY_PREFIX": "vidrec:rollout", "VIDREC_ADMIN_TOKEN": "mp-test-token",
           "VIDREC_USE_GPU": "false", "VIDREC_ORT_INTRA_THREADS": "1",
           "VIDREC_TIMEOUT_HYDRATE_S": "3", "VIDREC_TIMEOUT_RETRIEVE_S": "5",
           "VIDREC_TIMEOUT_SCORE_S": "5", "VIDREC_TIMEOUT_ITEMS_S": "3"}
    c = Cluster(tmp_path, env)
    stop = threading.Event()
    statuses: Counter = Counter()
    try:
        c.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(tmp_path)])
        settings = Settings(artifacts_dir=artifacts, bundle="v1",
                            redis_url=env["VIDREC_REDIS_URL"], key_prefix="vidrec:rollout")
        wait_until(lambda: c._alive("redis") and socket.create_connection(
            ("127.0.0.1", redis_port), timeout=1).close() is None, "redis", 20)
        load_bundle(settings, "v1", progress=False)
        urls: dict[str, str] = {}

        def start(name: str, service: str, extra: dict[str, str] | None = None) -> None:
            port = free_port()
            c.start(name, [vidrec_executable(), "serve", service, "--port", str(port)],
                    {**env, **(extra or {})})
            urls[name] = f"http://127.0.0.1:{port}"

        def ready(names: list[str]) -> None:  # started together, waited for together
            for name in names:
                wait_until(lambda n=name: c._alive(n) and httpx.get(
                    f"{urls[n]}/readyz", timeout=2).status_code == 200, name, 120)

        for i in (1, 2):
            start(f"retrieval{i}", "retrieval")
            start(f"ranking{i}", "ranking")
        ready(["retrieval1", "ranking1", "retrieval2", "ranking2"])
        for i in (1, 2):
            start(f"gateway{i}", "gateway", {"VIDREC_RETRIEVAL_URL": urls[f"retrieval{i}"],
                                             "VIDREC_RANKING_URL": urls[f"ranking{i}"]})
        ready(["gateway1", "gateway2"])
        assert set(_versions(urls).values()) == {"v1"}
        users = sorted(Bundle(artifacts / "v1").users())[:20]

        def load() -> None:
            k = 0
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    gw = urls[f"gateway{k % 2 + 1}"]
                    r = http.get(f"{gw}/v1/users/{users[k % len(users)]}/recommendations",
                                 params={"k": 10})
                    statuses[r.status_code] += 1
                    k += 1

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(1.0)

        # /admin/reload on one replica reaches all six
        r = httpx.post(f"{urls['gateway1']}/admin/reload", json={"bundle": "v2"},
                       headers=ADMIN, timeout=120)
        assert r.status_code == 200, r.text
        took = _all_on(urls, "v2")
        print(f"promote: all replicas on v2 {took:.1f} s after the reload answered")

        # `vidrec rollback` (a person at a terminal) moves them all back
        out = subprocess.run([vidrec_executable(), "rollback"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        took = _all_on(urls, "v1")
        print(f"rollback: all replicas on v1 within {took:.1f} s")

        # a bundle nobody can load: everyone keeps v1 and says so
        out = subprocess.run([vidrec_executable(), "promote", "broken"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

        def all_say_so() -> bool:
            for url in urls.values():
                rollout = httpx.get(f"{url}/readyz", timeout=5).json()["rollout"]
                if not (rollout["active"] == "broken" and rollout["error"]):
                    return False
            return True

        wait_until(all_say_so, "every replica reports the failed rollout", FOLLOW_WITHIN_S)
        assert set(_versions(urls).values()) == {"v1"}
        metrics = httpx.get(f"{urls['ranking2']}/metrics").text
        assert 'vidrec_rollout_behind{service="ranking"} 1.0' in metrics
        time.sleep(0.5)
    finally:
        stop.set()
        c.stop_all()
    assert statuses[200] > 20 and set(statuses) == {200}, statuses
