"""An experiment arm on a second bundle when retrieval and ranking are their own processes:
the gateway pushes the arms' bundles to them (PUT /admin/bundles) on a reload, each serves
both side by side, and a request names the bundle it wants. Real processes, HTTP, Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.serving import Servers
from services.feature_store.loader import load_bundle
from shared.bundle import Bundle
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix, gateway_settings, serving
from tests.retrieval.conftest import link_bundle
from tests.support import free_port

ADMIN = {"Authorization": "Bearer test-admin-token"}
OTHER = "small-b"
INACTIVE = """\
[experiments.b]
active = false
[experiments.b.arms.main]
weight = 1
[experiments.b.arms.other]
weight = 1
bundle = "small-b"
"""


@pytest.fixture(scope="module")
def setup(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[str, Path, dict[str, str], Bundle]]:
    root = tmp_path_factory.mktemp("exp-http")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    (artifacts / small_bundle.name).symlink_to(small_bundle)
    link_bundle(small_bundle, artifacts, OTHER)
    exp_file = root / "experiments.toml"
    exp_file.write_text(INACTIVE)
    settings: Settings = gateway_settings(artifacts / small_bundle.name, root / "state",
                                          experiments_file=exp_file, experiments_check_s=0)
    load_bundle(settings, settings.bundle, progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    env.update({"VIDREC_ARTIFACTS_DIR": str(artifacts), "VIDREC_BUNDLE": small_bundle.name,
                "VIDREC_REDIS_URL": settings.redis_url, "VIDREC_KEY_PREFIX": settings.key_prefix,
                "VIDREC_STATE_DIR": str(root / "state"), "VIDREC_ADMIN_TOKEN": "test-admin-token",
                "VIDREC_USE_GPU": "false", "PYTHONUNBUFFERED": "1"})
    servers = Servers(root)
    try:
        urls = {s: servers.start(s, free_port(), env) for s in ("retrieval", "ranking")}
        for url in urls.values():
            servers.wait_ready(url)
        from services.gateway.app import create_app

        gw = settings.model_copy(update={"retrieval_url": urls["retrieval"],
                                         "ranking_url": urls["ranking"]})
        with serving(create_app(gw)) as base:
            yield base, exp_file, urls, Bundle(small_bundle), settings
    finally:
        servers.stop()
        delete_prefix(settings)


def test_reload_loads_the_arm_bundle_in_remote_services(setup) -> None:
    base, exp_file, urls, bundle, _ = setup
    user = sorted(bundle.users())[0]
    # no arm bundle yet: asking retrieval for it directly is refused with a 409 that says so
    r = httpx.post(f"{urls['retrieval']}/v1/retrieve", timeout=30, json={
        "queries": [{"history": [], "caps": {"popular": 3}}], "bundle": OTHER})
    assert r.status_code == 409 and "not served" in r.json()["detail"]

    exp_file.write_text(INACTIVE.replace("active = false", "active = true"))
    r = httpx.post(f"{base}/admin/experiments/reload", headers=ADMIN, timeout=120)
    assert r.status_code == 200, r.text
    for service in ("retrieval", "ranking"):
        metrics = httpx.get(f"{urls[service]}/metrics", timeout=30).text
        assert f'vidrec_bundle_bytes{{bundle="{OTHER}",role="extra",service="{service}"}}' \
            in metrics
    other = httpx.get(f"{base}/v1/users/{user}/recommendations", timeout=30,
                      headers={"X-Vidrec-Arm": "other"}).json()
    main = httpx.get(f"{base}/v1/users/{user}/recommendations", timeout=30,
                     headers={"X-Vidrec-Arm": "main"}).json()
    assert other["degraded"] == [] and main["degraded"] == []
    assert other["model_version"] == OTHER and main["model_version"] == bundle.version
    # the same files: the same answer from either bundle
    assert [i["item_id"] for i in other["items"]] == [i["item_id"] for i in main["items"]]

    # experiment stopped: the extra bundle is dropped again
    exp_file.write_text(INACTIVE)
    assert httpx.post(f"{base}/admin/experiments/reload", headers=ADMIN,
                      timeout=120).status_code == 200
    metrics = httpx.get(f"{urls['ranking']}/metrics", timeout=30).text
    assert f'bundle="{OTHER}"' not in metrics


def _score_calls(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith('vidrec_stage_seconds_count{service="ranking",stage="score"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_arm_on_its_own_deployment(setup, tmp_path: Path) -> None:
    """The other way to run an arm: its own retrieval + ranking processes, named in the file.
    Here the gateway serves everything in-process, except that arm."""
    _, _, urls, bundle, settings = setup
    exp_file = tmp_path / "experiments.toml"
    exp_file.write_text(f"""
[experiments.d.arms.here]
weight = 1
[experiments.d.arms.there]
weight = 1
retrieval_url = "{urls['retrieval']}"
ranking_url = "{urls['ranking']}"
""")
    from services.gateway.app import create_app

    user = sorted(bundle.users())[0]
    with serving(create_app(settings.model_copy(update={"experiments_file": exp_file}))) as base:
        before = _score_calls(urls["ranking"])
        here = httpx.get(f"{base}/v1/users/{user}/recommendations", timeout=30,
                         headers={"X-Vidrec-Arm": "here"}).json()
        assert _score_calls(urls["ranking"]) == before  # answered in-process
        there = httpx.get(f"{base}/v1/users/{user}/recommendations", timeout=30,
                          headers={"X-Vidrec-Arm": "there"}).json()
        assert _score_calls(urls["ranking"]) == before + 1  # scored by the arm's deployment
    assert here["degraded"] == [] and there["degraded"] == []
    assert [i["item_id"] for i in here["items"]] == [i["item_id"] for i in there["items"]]
