"""The latency limit (shared/latency_limit.py): it moves toward the bound at which a request
admitted into the last free slot takes the target time (down when such requests take longer, up
when they take less); it holds when the limit is not reached, on too few samples, and when
answers are degraded (a failing dependency's timer, not the service's capacity), and while a
bundle reloads (every request slower for a while, not overload). The rule is checked with a
clock the test moves; then on a real app over real HTTP, and in the gateway, where a degraded
answer is told to admission control and a reload holds the limit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import httpx
import pytest
from fastapi import FastAPI

from services.feature_store.store import FeatureStore
from services.gateway.app import create_app
from shared.admission import (
    Admission,
    LimitRule,
    add_admission,
    door_of,
    mark_degraded,
)
from shared.latency_limit import MIN_SAMPLES, WINDOW_S, LatencyLimit
from shared.settings import Settings
from tests.gateway.conftest import serving


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def window(limit: LatencyLimit, clock: Clock, *, crowded: list[float], calm: int = 0,
           unhealthy: int = 0, alone: Sequence[float] = ()) -> int:
    """One window's completions, then an arrival in the next one (which closes it). calm:
    healthy requests admitted below the limit, fast (1 ms); alone: served by themselves."""
    limit.saw(1)  # opens the first window
    for seconds in crowded:
        limit.done(seconds, healthy=True, crowded=True, alone=False)
    for _ in range(calm):
        limit.done(0.001, healthy=True, crowded=False, alone=False)
    for seconds in alone:
        limit.done(seconds, healthy=True, crowded=False, alone=True)
    for _ in range(unhealthy):
        limit.done(1.0, healthy=False, crowded=True, alone=False)
    clock.now += WINDOW_S
    limit.saw(1)
    return limit.limit


def test_it_moves_toward_the_target_by_requests_admitted_at_the_limit() -> None:
    clock = Clock()
    seen: list[int] = []
    limit = LatencyLimit(start=8, floor=2, ceiling=16, target_s=0.03, on_change=seen.append,
                         clock=clock)
    # at the limit requests take 36 ms (median; one stalled) against 30: 8 x 30/36 = 6.7 -> 7
    assert window(limit, clock, crowded=[0.036] * 10 + [0.5]) == 7
    # many fast requests admitted below the limit do not say "room for more" ...
    assert window(limit, clock, crowded=[0.036] * 10, calm=100) == 6  # 6.67 x 5/6 = 5.6
    # ... and without requests at the limit it holds
    assert window(limit, clock, crowded=[], calm=100) == 6
    # 25 ms at the limit: 5.56 x 1.2 = 6.67 -> 7
    assert window(limit, clock, crowded=[0.025] * 10) == 7
    assert seen == [7, 6, 7]


def test_steps_are_bounded_and_so_is_the_limit() -> None:
    clock = Clock()
    limit = LatencyLimit(start=8, floor=2, ceiling=12, target_s=0.03, clock=clock)
    assert window(limit, clock, crowded=[1.0] * 10) == 6  # at most a quarter down
    for _ in range(10):
        window(limit, clock, crowded=[1.0] * 10)
    assert limit.limit == 2  # the floor
    assert window(limit, clock, crowded=[0.001] * 10) == 2  # 2.5 rounds to 2 (banker's)
    assert window(limit, clock, crowded=[0.001] * 10) == 3  # at most a quarter up: 3.1
    for _ in range(20):
        window(limit, clock, crowded=[0.001] * 10)
    assert limit.limit == 12  # the ceiling


def test_it_holds_on_too_few_samples_or_degraded_answers() -> None:
    clock = Clock()
    limit = LatencyLimit(start=8, floor=2, ceiling=16, target_s=0.03, clock=clock)
    assert window(limit, clock, crowded=[0.1] * (MIN_SAMPLES - 1)) == 8
    # a failing dependency: 30% of the answers degraded, the healthy ones slow as well
    assert window(limit, clock, crowded=[0.1] * 14, unhealthy=6) == 8
    assert limit.unhealthy_total == 6 and limit.healthy_total == MIN_SAMPLES - 1 + 14
    # a few degraded answers among many healthy ones do not stop it learning
    assert window(limit, clock, crowded=[0.1] * 19, unhealthy=1) == 6


def test_it_holds_while_held_and_learns_again_after() -> None:
    clock = Clock()
    limit = LatencyLimit(start=8, floor=2, ceiling=16, target_s=0.03, clock=clock)
    held = True
    limit.held = lambda: held
    for _ in range(5):  # a reload: every request 4x the target, healthy
        assert window(limit, clock, crowded=[0.12] * 10) == 8
    held = False
    assert window(limit, clock, crowded=[0.12] * 10) == 6


def test_admission_is_held_during_a_change_and_while_it_settles() -> None:
    admission = Admission("gateway", 8, 0, 0.0,
                          LatencyLimit(start=8, floor=2, ceiling=16, target_s=0.03))
    assert not admission.held()
    with admission.steady(settle_s=0.0):
        assert admission.held()
        with admission.steady(settle_s=0.0):  # two at once: held until both end
            pass
        assert admission.held()
    assert not admission.held()
    with admission.steady(settle_s=60.0):
        pass
    assert admission.held()  # settling
    assert admission.adaptive is not None and admission.adaptive.held()  # what the rule reads


def test_where_a_request_alone_is_slower_than_the_target_it_only_stops_queueing() -> None:
    clock = Clock()
    limit = LatencyLimit(start=6, floor=2, ceiling=16, target_s=0.025, clock=clock)
    # a dependency slow within its timer: 70 ms alone, 80 ms at the limit. No bound makes that
    # 25 ms; the bar is 1.5 x 70 = 105 ms, and 80 ms is under it: room for more
    assert window(limit, clock, crowded=[0.08] * 10, alone=[0.07] * 5) == 8
    assert limit.alone_s == pytest.approx(0.07)
    # requests queueing behind each other (150 ms at the limit) still bring it down
    assert window(limit, clock, crowded=[0.15] * 10) == 6
    # the lone time is a running median: the dependency recovers, 10 ms alone -> 40 ms bar
    assert window(limit, clock, crowded=[], alone=[0.01] * 5) == 6
    assert limit.alone_s == pytest.approx(0.04)
    assert window(limit, clock, crowded=[0.08] * 10) == 4  # 5.6 x 0.75 = 4.2
    # lone requests back within the target (2 ms): the bar is the target again, not 1.5 x 2 ms
    for _ in range(6):
        window(limit, clock, crowded=[], alone=[0.002] * 5)
    assert limit.alone_s is not None and limit.alone_s < 0.025
    assert window(limit, clock, crowded=[0.02] * 10) == 5  # 4.22 x 1.25 = 5.3


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        LatencyLimit(start=4, floor=5, ceiling=3, target_s=0.025)
    with pytest.raises(ValueError, match="target"):
        LatencyLimit(start=4, floor=1, ceiling=8, target_s=0)


def _app(degrade: bool, seconds: float = 0.1) -> FastAPI:
    settings = Settings(max_in_flight=8, admission_limit="latency", admission_min_in_flight=2,
                        admission_target_latency_s=seconds / 4)
    app = FastAPI()

    @app.get("/work")
    async def work() -> dict:
        await asyncio.sleep(seconds)  # four times the target: a slow dependency
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


def test_over_http_a_flood_during_a_change_leaves_it_and_after_brings_it_down() -> None:
    app = _app(degrade=False)
    with serving(app) as base:
        door = door_of(app)
        assert door is not None
        with door.admission.steady(settle_s=0.0):
            counts = _flood(base, 1.5)
            assert counts.get(200, 0) > MIN_SAMPLES, counts
            assert _rule(app).limit == 8  # 4x the target, but a reload was running
        _flood(base, 1.5)
    assert _rule(app).limit < 8  # the same load once it was over


def test_over_http_a_dependency_slow_for_everyone_does_not_bring_it_down() -> None:
    """Answers that take as long alone as in a crowd are slow for a reason no bound changes:
    once the gateway has seen them alone, a flood does not lower its bound."""
    app = _app(degrade=False, seconds=0.05)
    with serving(app) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(30):  # one at a time: 1.5 s of lone requests
                assert http.get("/work").status_code == 200
        rule = _rule(app)
        assert isinstance(rule, LatencyLimit) and rule.alone_s is not None
        counts = _flood(base, 2.0)
    assert counts.get(200, 0) > MIN_SAMPLES, counts
    assert rule.limit >= 8, (rule.limit, rule.alone_s)  # the slow app over HTTP above: < 8


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



def test_a_gateway_reload_holds_its_limit(latency_settings: Settings,
                                                     admin: dict[str, str]) -> None:
    app = create_app(latency_settings)
    with serving(app) as base:
        admission: Admission = app.state.admission
        assert not admission.held()
        reply = httpx.post(f"{base}/admin/reload", headers=admin, timeout=120)
        assert reply.status_code == 200, reply.text
        assert admission.held()  # settling after the swap (SETTLE_AFTER_CHANGE_S)
