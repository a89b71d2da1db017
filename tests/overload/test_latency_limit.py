"""The latency limit (shared/latency_limit.py): while it binds, it moves toward the bound at
which an admitted request takes the target time (down when requests take longer, up when they
take less); it holds when it does not bind, on too few samples, and when answers are degraded
(a failing dependency's timer, not the service's capacity). The rule is checked with a clock the
test moves; then on a real app over real HTTP, and in the gateway, where a degraded answer is
told to admission control."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

from services.feature_store.store import FeatureStore
from services.gateway.app import create_app
from shared.admission import LimitRule, add_admission, door_of, mark_degraded
from shared.latency_limit import MIN_SAMPLES, WINDOW_S, LatencyLimit
from shared.settings import Settings
from tests.gateway.conftest import serving


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def window(limit: LatencyLimit, clock: Clock, *, binding: int, healthy: int, seconds: float,
           unhealthy: int = 0) -> int:
    """One window's events, then the first event of the next one (which closes it)."""
    limit.saw(0)  # opens the first window
    for _ in range(binding):
        limit.saw(limit.limit + 1)
    for _ in range(healthy):
        limit.done(seconds, healthy=True)
    for _ in range(unhealthy):
        limit.done(1.0, healthy=False)
    clock.now += WINDOW_S
    limit.saw(0)
    return limit.limit


def test_it_moves_toward_the_target_only_while_it_binds() -> None:
    clock = Clock()
    seen: list[int] = []
    limit = LatencyLimit(start=8, floor=2, ceiling=16, target_s=0.025, on_change=seen.append,
                         clock=clock)
    # requests take 40 ms against a 25 ms target: 8 x 25/40 = 5
    assert window(limit, clock, binding=3, healthy=20, seconds=0.040) == 5
    # the same times without a refusal: the limit did not matter, it holds
    assert window(limit, clock, binding=0, healthy=20, seconds=0.040) == 5
    # 20 ms: 5 x 25/20 = 6.25 -> 6, kept fractional (a second window: 7.8 -> 8)
    assert window(limit, clock, binding=1, healthy=20, seconds=0.020) == 6
    assert window(limit, clock, binding=1, healthy=20, seconds=0.020) == 8
    assert seen == [5, 6, 8]


def test_steps_are_bounded_and_so_is_the_limit() -> None:
    clock = Clock()
    limit = LatencyLimit(start=8, floor=2, ceiling=12, target_s=0.025, clock=clock)
    assert window(limit, clock, binding=1, healthy=20, seconds=1.0) == 4  # at most halved
    assert window(limit, clock, binding=1, healthy=20, seconds=1.0) == 2
    assert window(limit, clock, binding=1, healthy=20, seconds=1.0) == 2  # the floor
    assert window(limit, clock, binding=1, healthy=20, seconds=0.001) == 3  # at most x1.5
    for _ in range(10):
        window(limit, clock, binding=1, healthy=20, seconds=0.001)
    assert limit.limit == 12  # the ceiling


def test_it_holds_on_too_few_samples_or_degraded_answers() -> None:
    clock = Clock()
    limit = LatencyLimit(start=8, floor=2, ceiling=16, target_s=0.025, clock=clock)
    assert window(limit, clock, binding=5, healthy=MIN_SAMPLES - 1, seconds=0.1) == 8
    # a failing dependency: 30% of the answers degraded, the healthy ones slow as well
    assert window(limit, clock, binding=5, healthy=14, unhealthy=6, seconds=0.1) == 8
    assert limit.unhealthy_total == 6 and limit.healthy_total == MIN_SAMPLES - 1 + 14
    # a few degraded answers among many healthy ones do not stop it learning
    assert window(limit, clock, binding=5, healthy=19, unhealthy=1, seconds=0.05) == 4


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        LatencyLimit(start=4, floor=5, ceiling=3, target_s=0.025)
    with pytest.raises(ValueError, match="target"):
        LatencyLimit(start=4, floor=1, ceiling=8, target_s=0)


def _app(degrade: bool) -> FastAPI:
    settings = Settings(max_in_flight=8, admission_limit="latency", admission_min_in_flight=2,
                        admission_target_latency_s=0.025)
    app = FastAPI()

    @app.get("/work")
    async def work() -> dict:
        await asyncio.sleep(0.1)  # four times the target
        if degrade:
            mark_degraded()
        return {"ok": True}

    add_admission(app, settings, "gateway")
    return app


def _flood(base: str, seconds: float, clients: int = 24) -> dict[int, int]:
    """`clients` threads sending one request after another for `seconds`: status counts."""
    counts: dict[int, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            while time.monotonic() < end:
                status = http.get("/work").status_code
                with lock:
                    counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def _rule(app: FastAPI) -> LimitRule:
    door = door_of(app)
    assert door is not None and door.admission.adaptive is not None
    return door.admission.adaptive


def test_over_http_slow_answers_bring_it_down_degraded_ones_do_not() -> None:
    slow, degraded = _app(degrade=False), _app(degrade=True)
    with serving(slow) as base:
        counts = _flood(base, 2.0)
    assert counts.get(503, 0) > 0 and counts.get(200, 0) > MIN_SAMPLES, counts
    assert _rule(slow).limit < 8  # 8 x 100 ms: every window says "too many"
    with serving(degraded) as base:
        counts = _flood(base, 2.0)
    assert counts.get(503, 0) > 0 and counts.get(200, 0) > MIN_SAMPLES, counts
    assert _rule(degraded).limit == 8  # the same times, all degraded: held


@pytest.fixture(scope="module")
def latency_settings(gw_settings: Settings) -> Settings:
    return gw_settings.model_copy(update={"admission_limit": "latency"})


def _answers(base: str, user: str, n: int) -> list[list[str]]:
    with httpx.Client(base_url=base, timeout=30) as http:
        replies = [http.get(f"/v1/users/{user}/recommendations", params={"k": 5})
                   for _ in range(n)]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    return [r.json()["degraded"] for r in replies]


@pytest.fixture(scope="module")
def user(latency_settings: Settings) -> str:
    from shared.bundle import Bundle

    seqs = Bundle.open(latency_settings.artifacts_dir, latency_settings.bundle).users()
    return max(seqs, key=lambda u: (len(seqs[u]), u))


def test_the_gateway_tells_admission_which_answers_were_degraded(
        latency_settings: Settings, dead_url, user: str) -> None:
    healthy_app = create_app(latency_settings)
    with serving(healthy_app) as base:
        assert _answers(base, user, 5) == [[]] * 5
    rule = _rule(healthy_app)
    assert isinstance(rule, LatencyLimit)
    assert (rule.healthy_total, rule.unhealthy_total) == (5, 0)

    dead = latency_settings.model_copy(update={"redis_url": dead_url("redis") + "/0"})
    down_app = create_app(latency_settings, feature_store=FeatureStore.from_settings(dead))
    with serving(down_app) as base:
        assert all("hydrate" in d for d in _answers(base, user, 5))
    rule = _rule(down_app)
    assert isinstance(rule, LatencyLimit)
    assert (rule.healthy_total, rule.unhealthy_total) == (0, 5)

