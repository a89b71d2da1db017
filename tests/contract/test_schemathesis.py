"""The HTTP contract is exact: schemathesis (`st run`, every check, every phase including the
stateful one) against the gateway and each internal service, with and without the admin
token, finds 0 failures.

Real services (uvicorn, one per service, the gateway talking to the others over HTTP), the real
Redis and the real small bundle. Examples per operation are few (MAX_EXAMPLES) to keep CI time
short (205 s measured on a 2-core machine shared by six test runs, load ~25); run `st run` by
hand with more for a deeper search.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.feature_store.loader import load_bundle
from tests.gateway.conftest import ADMIN_TOKEN, delete_prefix, gateway_settings, serving

HERE = Path(__file__).resolve().parent
ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = 2


@pytest.fixture(scope="module")
def services(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, str]]:
    from services.feature_store.app import create_app as feature_store_app
    from services.gateway.app import create_app as gateway_app
    from services.ranking.app import create_app as ranking_app
    from services.retrieval.app import create_app as retrieval_app

    settings = gateway_settings(small_bundle, tmp_path_factory.mktemp("contract-state"))
    load_bundle(settings, settings.bundle, progress=False)
    urls: dict[str, str] = {}
    try:
        with ExitStack() as stack:
            urls["feature_store"] = stack.enter_context(serving(feature_store_app(settings)))
            urls["retrieval"] = stack.enter_context(serving(retrieval_app(settings)))
            urls["ranking"] = stack.enter_context(serving(ranking_app(settings)))
            remote = settings.model_copy(update={
                "feature_store_url": urls["feature_store"], "retrieval_url": urls["retrieval"],
                "ranking_url": urls["ranking"]})
            urls["gateway"] = stack.enter_context(serving(gateway_app(remote)))
            yield urls
    finally:
        delete_prefix(settings)


def st_run(base: str, token: str | None) -> subprocess.CompletedProcess[str]:
    if not ST.is_file():
        pytest.fail(f"{ST} missing: install the dev extra (schemathesis)")
    args = [str(ST), "--config-file", str(HERE / "schemathesis.toml"), "run",
            f"{base}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
            "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1",
            "--request-timeout", "120",
            # POST /admin/reload loads a whole bundle: seconds to minutes, past the 10 s default
            "--max-response-time", "300", "--seed", "1", "--warnings", "off"]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def test_schemathesis_finds_no_failures(services: dict[str, str]) -> None:
    """Eight `st run`s (four services, with and without the token) at once: they mostly wait
    on the servers, which share the cores."""
    runs = {(name, auth): (base, token) for name, base in services.items()
            for auth, token in (("admin", ADMIN_TOKEN), ("anonymous", None))}
    with ThreadPoolExecutor(len(runs)) as pool:
        results = dict(zip(runs, pool.map(lambda bt: st_run(*bt), runs.values()), strict=True))
    failed = {key: r for key, r in results.items() if r.returncode != 0}
    report = "\n\n".join(f"==== {name} ({auth}): exit {r.returncode}\n{r.stdout[-4000:]}"
                         f"{r.stderr[-1000:]}" for (name, auth), r in failed.items())
    assert not failed, report
