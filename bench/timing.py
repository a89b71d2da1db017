"""Summaries of timed samples that the latency benchmarks share."""

from __future__ import annotations

import numpy as np


def median_p90_ms(samples: list[float]) -> dict[str, float]:
    """Seconds -> {"median_ms", "p90_ms"}, rounded to microseconds."""
    arr = np.array(samples) * 1000
    return {"median_ms": round(float(np.median(arr)), 3),
            "p90_ms": round(float(np.percentile(arr, 90)), 3)}
