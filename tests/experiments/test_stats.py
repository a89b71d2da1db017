"""The report's statistics against cases checked by hand (numbers worked out on paper from the
textbook formulas, so a wrong library call or a swapped argument is caught)."""

from __future__ import annotations

import pytest

from services.gateway.experiments.ledger import ArmCounts, bucket_upper_s, latency_bucket
from services.gateway.experiments.report import build_report, quantile_s
from services.gateway.experiments.stats import Mean, Rate, compare_means, compare_rates
from shared.experiments import parse


def test_wilson_interval_by_hand() -> None:
    # p = 0.1, n = 200, z = 1.96: centre (p + z^2/2n) / (1 + z^2/n) = 0.107539,
    # half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 0.041869
    low, high = Rate(20, 200).ci()
    assert low == pytest.approx(0.065670, abs=2e-5)
    assert high == pytest.approx(0.149408, abs=2e-5)
    assert Rate(0, 0).ci() is None and Rate(0, 0).value is None


def test_two_proportion_test_by_hand() -> None:
    # 30/200 vs 20/200: pooled p = 0.125, se = sqrt(0.125 * 0.875 * (2/200)) = 0.033072,
    # z = 0.05 / 0.033072 = 1.5119, two-sided p = 2 (1 - Phi(1.5119)) = 0.1306
    assert compare_rates(Rate(30, 200), Rate(20, 200)) == pytest.approx(0.1306, abs=5e-4)
    # 60/400 vs 20/400: z = 0.1 / sqrt(0.1 * 0.9 * 2/400) = 4.714, p = 2.4e-6
    assert compare_rates(Rate(60, 400), Rate(20, 400)) == pytest.approx(2.43e-6, rel=0.02)
    assert compare_rates(Rate(0, 100), Rate(0, 100)) is None  # nothing to test


def test_welch_test_and_mean_interval_by_hand() -> None:
    def mean(m: float, sd: float, n: int) -> Mean:
        # sums that give exactly this mean and sample standard deviation
        return Mean(n, m * n, sd * sd * (n - 1) + n * m * m)

    a, b = mean(0.6, 0.2, 50), mean(0.5, 0.25, 40)
    assert a.value == pytest.approx(0.6) and a.std == pytest.approx(0.2)
    # se = sqrt(0.04/50 + 0.0625/40) = 0.048606, t = 2.0574, Welch df = 73.8 -> p = 0.0432
    assert compare_means(a, b) == pytest.approx(0.0432, abs=1e-3)
    # t(0.975, 49) = 2.0096: 0.6 +- 2.0096 * 0.2 / sqrt(50) = [0.54316, 0.65684]
    low, high = a.ci()
    assert low == pytest.approx(0.54316, abs=1e-4) and high == pytest.approx(0.65684, abs=1e-4)
    assert Mean(1, 0.5, 0.25).ci() is None


def test_latency_buckets_and_quantiles() -> None:
    for seconds in (0.0001, 0.0012, 0.01, 0.25, 3.0):
        upper = bucket_upper_s(latency_bucket(seconds))
        assert seconds <= upper * (1 + 1e-9) and upper <= seconds * 1.1 + 1e-12
    buckets = {latency_bucket(0.010): 98, latency_bucket(0.050): 2}
    assert quantile_s(buckets, 0.5) == pytest.approx(0.010, rel=0.1)
    assert quantile_s(buckets, 0.99) == pytest.approx(0.050, rel=0.1)
    assert quantile_s({}, 0.5) is None


def test_report_compares_arms_and_flags_the_guardrail() -> None:
    exp = parse("""
[experiments.e]
control = "a"
[experiments.e.guardrail]
p99_latency_margin = 0.2
error_rate_margin = 0.01
[experiments.e.arms.a]
weight = 1
[experiments.e.arms.b]
weight = 1
""").active
    fast, slow = latency_bucket(0.010), latency_bucket(0.030)
    counts = {
        "a": ArmCounts({"impressions": 400, "clicked": 20, "errors": 0}, {fast: 400}, 90),
        "b": ArmCounts({"impressions": 400, "clicked": 60, "errors": 20}, {slow: 420}, 150),
    }
    report = build_report(exp, counts, catalog_size=300, active=True)
    a, b = report["arms"]
    assert a["control"] and a["ctr"]["value"] == 0.05 and a["coverage"] == 0.3
    assert b["observed_share"] == 0.5 and b["expected_share"] == 0.5
    assert b["vs_control"]["ctr"]["p_value"] == pytest.approx(2.43e-6, rel=0.02)
    assert b["vs_control"]["ctr"]["significant"] and b["vs_control"]["ctr"]["difference"] == 0.1
    flagged = b["guardrail"]
    assert flagged["flagged"] and len(flagged["reasons"]) == 2, flagged
    assert "p99 latency" in flagged["reasons"][0] and "error rate" in flagged["reasons"][1]
    assert b["error_rate"]["value"] == pytest.approx(20 / 420, abs=1e-6)
