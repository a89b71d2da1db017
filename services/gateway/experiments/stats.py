"""The statistics of an experiment report, computed with scipy (a maintained library), never by
hand: Wilson intervals for rates, t intervals for means, and two-sided tests of an arm against
control (Pearson's chi-squared on the 2x2 table without continuity correction, which is the
pooled two-proportion z-test; Welch's t-test for means).

Every function answers None where the data cannot support an answer (no impressions yet, a
zero-variance sample), rather than a misleading number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    def ci(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        if self.trials <= 0:
            return None
        from scipy.stats import binomtest

        ci = binomtest(self.successes, self.trials).proportion_ci(confidence, method="wilson")
        return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Mean:
    n: int
    total: float
    total_sq: float

    @property
    def value(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1)."""
        if self.n < 2:
            return None
        mean = self.total / self.n
        return math.sqrt(max(0.0, (self.total_sq - self.n * mean * mean) / (self.n - 1)))

    def ci(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        std = self.std
        if std is None or std == 0.0:
            return None
        from scipy.stats import t

        low, high = t.interval(confidence, self.n - 1, loc=self.value,
                               scale=std / math.sqrt(self.n))
        return float(low), float(high)


def compare_rates(arm: Rate, control: Rate) -> float | None:
    """Two-sided p-value for 'the two rates are equal'."""
    table = [[arm.successes, arm.trials - arm.successes],
             [control.successes, control.trials - control.successes]]
    if min(arm.trials, control.trials) <= 0 or any(sum(col) == 0 for col in zip(*table,
                                                                                  strict=True)):
        return None  # an empty row or column: no test (scipy would divide by zero)
    from scipy.stats import chi2_contingency

    return float(chi2_contingency(table, correction=False).pvalue)


def compare_means(arm: Mean, control: Mean) -> float | None:
    """Two-sided Welch t-test p-value for 'the two means are equal'."""
    sa, sc = arm.std, control.std
    if sa is None or sc is None or (sa == 0.0 and sc == 0.0):
        return None
    from scipy.stats import ttest_ind_from_stats

    result = ttest_ind_from_stats(arm.value, sa, arm.n, control.value, sc, control.n,
                                  equal_var=False)
    return float(result.pvalue)
