"""Browser tests: Debian's chromium driven by selenium through Debian's chromedriver, against a
real `vidrec serve all` process on the small test bundle and the real Redis (a key prefix of
its own).

Nothing is downloaded: the driver and the browser are given by path, so Selenium Manager never
runs, and chromium starts with its background networking off. Without chromium the tests skip
on a developer's machine and FAIL in CI (`CI` set), where `.ci/run` installs it.

Screenshots go to test-results/browser/ (git-ignored); every test fails on a JavaScript error
or a failed request the browser logged, except the ones a test provokes on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from services.feature_store.loader import load_bundle
from shared.settings import Settings
from tests.gateway.conftest import delete_prefix
from tests.support import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("VIDREC_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("VIDREC_CHROMEDRIVER", "/usr/bin/chromedriver"))
RESULTS = REPO / "test-results" / "browser"
ADMIN_TOKEN = "browser-test-token"
DESKTOP = (1280, 900)
PHONE = (390, 844)


def _require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if not missing:
        return
    why = (f"{' and '.join(missing)} missing: apt-get install -y chromium chromium-driver "
           "(.ci/run installs them)")
    if os.environ.get("CI"):
        pytest.fail(f"browser tests must run in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def results_dir() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS


@contextmanager
def serving(small_bundle: Path, state: Path, service: str = "all",
            **env: str) -> Iterator[str]:
    """`vidrec serve <service>` (a process of its own) on the small bundle, loaded into Redis
    under a fresh key prefix; yields its base URL once /healthz answers."""
    settings = Settings(artifacts_dir=small_bundle.parent, bundle=small_bundle.name,
                        key_prefix=f"vidrec:test:{uuid.uuid4().hex}", state_dir=state,
                        admin_token=ADMIN_TOKEN, use_gpu=False)
    load_bundle(settings, settings.bundle, progress=False)
    port = free_port()
    full_env = {**os.environ, "VIDREC_ARTIFACTS_DIR": str(settings.artifacts_dir),
                "VIDREC_BUNDLE": settings.bundle, "VIDREC_KEY_PREFIX": settings.key_prefix,
                "VIDREC_STATE_DIR": str(state), "VIDREC_ADMIN_TOKEN": ADMIN_TOKEN,
                "VIDREC_USE_GPU": "false", "VIDREC_ORT_INTRA_THREADS": "1",
                # a page load fetches several things at once; a busy CI box must not shed them
                "VIDREC_MAX_IN_FLIGHT": "8",
                "VIDREC_CONSOLE_SAMPLE_S": "1",
                # generous stage budgets: a busy 2-core test machine must not degrade answers
                "VIDREC_TIMEOUT_HYDRATE_S": "2", "VIDREC_TIMEOUT_RETRIEVE_S": "5",
                "VIDREC_TIMEOUT_SCORE_S": "5", "VIDREC_TIMEOUT_ITEMS_S": "2", **env}
    log_path = state / f"{service}.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "vidrec_cli", "serve", service, "--host",
                             "127.0.0.1", "--port", str(port)], cwd=REPO, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        yield base
    finally:
        stop_process(proc)
        log.close()
        delete_prefix(settings)


@pytest.fixture(scope="session")
def site(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `vidrec serve all` on the small bundle."""
    _require_chromium()
    with serving(small_bundle, tmp_path_factory.mktemp("browser-state")) as base:
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        yield base


@pytest.fixture(scope="module")
def degraded_site(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[str]:
    """The gateway alone with the ranker's URL pointing where nothing listens: every known
    user's answer is degraded at the score stage, and /readyz says ranking is down."""
    _require_chromium()
    dead = f"http://127.0.0.1:{free_port()}"
    with serving(small_bundle, tmp_path_factory.mktemp("browser-degraded"), "gateway",
                 VIDREC_RANKING_URL=dead, VIDREC_TIMEOUT_SCORE_S="0.5") as base:
        yield base


@pytest.fixture(scope="module")
def experiment_site(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[str]:
    """`vidrec serve all` with an active two-arm experiment: popular-only against the model."""
    _require_chromium()
    folder = tmp_path_factory.mktemp("browser-experiment")
    config = folder / "experiments.toml"
    config.write_text('[experiments.console-check]\ncontrol = "popular"\n\n'
                      '[experiments.console-check.arms.popular]\nweight = 1\n'
                      'sources = ["popular"]\nranker = false\n\n'
                      '[experiments.console-check.arms.model]\nweight = 1\n')
    with serving(small_bundle, tmp_path_factory.mktemp("browser-experiment-state"),
                 VIDREC_EXPERIMENTS_FILE=str(config)) as base:
        yield base


@pytest.fixture(scope="session")
def driver(site: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager must never fetch a driver or a browser: paths are given, and offline.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-default-apps", "--disable-sync", "--disable-extensions",
                "--no-first-run", "--no-default-browser-check", "--metrics-recording-only",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                               options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The browser on one of our pages, with the checks every test shares."""

    def __init__(self, driver, base: str, results: Path) -> None:
        self.driver = driver
        self.base = base
        self.results = results
        self.allowed: list[str] = []  # substrings of log lines a test provokes on purpose

    def open(self, path: str, size: tuple[int, int] = DESKTOP, base: str | None = None) -> Page:
        self.driver.set_window_size(*size)
        self.driver.get((base or self.base) + path)
        return self

    def wait(self, condition, timeout: float = 20.0, what: str = ""):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # A condition that reads elements the page replaces while it re-renders (the tag chips,
        # once per key typed into the filter) can hold a detached one: not settled yet, so
        # poll again rather than fail.
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)
                             ).until(condition, what)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector: str):
        found = self.css(selector)
        assert found, f"nothing matches {selector!r}"
        return found[0]

    def screenshot(self, name: str) -> Path:
        """`name.png`: the top of the page at the current window size (what the README
        shows); `name-full.png`: the whole page."""
        self.driver.execute_script("window.scrollTo(0, 0); document.activeElement?.blur();")
        path = self.results / f"{name}.png"
        self.driver.save_screenshot(str(path))
        size = self.driver.get_window_size()
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(size["width"], min(max(height + 140, 600), 4000))
        self.driver.save_screenshot(str(self.results / f"{name}-full.png"))
        self.driver.set_window_size(size["width"], size["height"])
        return path

    def record(self, name: str, value) -> None:
        path = self.results / "measurements.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[name] = value
        path.write_text(json.dumps(data, indent=2) + "\n")

    def js_errors(self) -> list[str]:
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries if e["level"] == "SEVERE"
                and not any(a in e["message"] for a in self.allowed)]


@pytest.fixture
def page(driver, site: str, results_dir: Path) -> Iterator[Page]:
    driver.get_log("browser")  # start each test with an empty log
    p = Page(driver, site, results_dir)
    yield p
    errors = p.js_errors()
    # leave no page polling (the console reads /readyz every few seconds): its next request
    # would land in the following test's log, after that test's page fixture emptied it
    driver.get("about:blank")
    driver.get_log("browser")
    assert not errors, "the browser logged errors:\n" + "\n".join(errors)
