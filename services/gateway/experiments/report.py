"""GET /v1/experiments/{name}: the per-arm metrics from the ledger's counters, each arm
compared with control, and the guardrail."""

from __future__ import annotations

import time
from typing import Any

from services.gateway.experiments.ledger import ArmCounts, bucket_upper_s
from services.gateway.experiments.stats import Mean, Rate, compare_means, compare_rates
from shared.experiments import Experiment

ALPHA = 0.05
EVENT_COUNTERS = ("plays", "completions", "likes", "skips", "dislikes", "late")


def quantile_s(buckets: dict[int, int], q: float) -> float | None:
    """The q-quantile from the bucketed histogram (the upper edge of its bucket: <= 10% high)."""
    total = sum(buckets.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for i in sorted(buckets):
        seen += buckets[i]
        if seen >= rank:
            return bucket_upper_s(i)
    return bucket_upper_s(max(buckets))


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def _p(p: float | None) -> float | None:
    """p-values keep 4 significant digits (rounding to decimals would turn 1e-12 into 0)."""
    return None if p is None else float(f"{p:.4g}")


def _ci(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [round(ci[0], 6), round(ci[1], 6)]


def arm_metrics(c: ArmCounts, catalog_size: int) -> dict[str, Any]:
    impressions = int(c.get("impressions"))
    errors = int(c.get("errors"))
    ctr = Rate(int(c.get("clicked")), impressions)
    wf = Mean(int(c.get("wf_n")), c.get("wf_sum"), c.get("wf_sumsq"))
    err = Rate(errors, impressions + errors)
    p50, p99 = quantile_s(c.latency_buckets, 0.5), quantile_s(c.latency_buckets, 0.99)
    return {
        "impressions": impressions,
        **{name: int(c.get(name)) for name in EVENT_COUNTERS},
        "clicked_impressions": ctr.successes,
        "ctr": {"value": _r(ctr.value), "ci95": _ci(ctr.ci())},
        "watch_fraction": {"mean": _r(wf.value), "ci95": _ci(wf.ci()), "n": wf.n},
        "distinct_items": c.distinct_items,
        "coverage": _r(c.distinct_items / catalog_size) if catalog_size else None,
        "latency_ms": {"p50": _r(p50 * 1e3 if p50 else None, 3),
                       "p99": _r(p99 * 1e3 if p99 else None, 3)},
        "errors": errors,
        "error_rate": {"value": _r(err.value), "ci95": _ci(err.ci())},
        "degraded": int(c.get("degraded")),
        "_rates": (ctr, wf, err, p99),  # for the comparison; removed before answering
    }


def build_report(exp: Experiment, counts: dict[str, ArmCounts], catalog_size: int,
                 active: bool) -> dict[str, Any]:
    arms = {a.name: arm_metrics(counts[a.name], catalog_size) for a in exp.arms}
    total_weight = sum(a.weight for a in exp.arms)
    total_impressions = sum(m["impressions"] for m in arms.values())
    ctr0, wf0, err0, p99_0 = arms[exp.control]["_rates"]
    g = exp.guardrail
    out = []
    for arm in exp.arms:
        m = arms[arm.name]
        ctr, wf, err, p99 = m.pop("_rates")
        entry: dict[str, Any] = {
            "arm": arm.name, "control": arm.name == exp.control, "bundle": arm.bundle,
            "weight": arm.weight,
            "expected_share": round(arm.weight / total_weight, 6),
            "observed_share": _r(m["impressions"] / total_impressions)
            if total_impressions else None,
            **m}
        if arm.name != exp.control:
            p_ctr, p_wf = compare_rates(ctr, ctr0), compare_means(wf, wf0)
            entry["vs_control"] = {
                "ctr": {"difference": _r(ctr.value - ctr0.value)
                        if ctr.value is not None and ctr0.value is not None else None,
                        "relative_lift": _r(ctr.value / ctr0.value - 1)
                        if ctr.value is not None and ctr0.value else None,
                        "p_value": _p(p_ctr),
                        "significant": p_ctr is not None and p_ctr < ALPHA},
                "watch_fraction": {"difference": _r(wf.value - wf0.value)
                                   if wf.value is not None and wf0.value is not None else None,
                                   "p_value": _p(p_wf),
                                   "significant": p_wf is not None and p_wf < ALPHA},
                "error_rate": {"p_value": _p(compare_rates(err, err0))},
            }
            reasons = []
            if p99 is not None and p99_0 is not None and p99 > p99_0 * (1 + g.p99_latency_margin):
                reasons.append(f"p99 latency {p99 * 1e3:.1f} ms is more than "
                               f"{g.p99_latency_margin:.0%} above control's {p99_0 * 1e3:.1f} ms")
            if err.value is not None and err0.value is not None \
                    and err.value > err0.value + g.error_rate_margin:
                reasons.append(f"error rate {err.value:.2%} is more than "
                               f"{g.error_rate_margin * 100:g} pp above control's "
                               f"{err0.value:.2%}")
            entry["guardrail"] = {"flagged": bool(reasons), "reasons": reasons}
        out.append(entry)
    return {
        "experiment": exp.name, "active": active, "description": exp.description,
        "control": exp.control, "ctr_k": exp.ctr_k,
        "guardrail": {"p99_latency_margin": g.p99_latency_margin,
                      "error_rate_margin": g.error_rate_margin},
        "catalog_items": catalog_size, "impressions": total_impressions,
        "arms": out, "alpha": ALPHA,
        "generated_at": time.time(),
    }
