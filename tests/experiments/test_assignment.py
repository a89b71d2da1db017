"""Sticky, deterministic assignment; weights respected; the QA override."""

from __future__ import annotations

from collections import Counter

import pytest
from scipy.stats import chisquare

from services.gateway.experiments.assignment import UnknownArm, assign, forced, place
from shared.experiments import parse

TEXT = """\
[experiments.homepage.arms.control]
weight = 70
[experiments.homepage.arms.b]
weight = 20
[experiments.homepage.arms.c]
weight = 10
"""


@pytest.fixture(scope="module")
def exp():
    return parse(TEXT).active


def test_sticky_and_deterministic(exp) -> None:
    users = [f"user-{i}" for i in range(500)]
    first = [assign(exp, u).arm for u in users]
    assert [assign(exp, u).arm for u in users] == first  # same answer every time
    # known values: the hash is part of the contract (replicas and restarts must agree)
    assert place("homepage", "user-1") == place("homepage", "user-1")
    assert place("homepage", "user-1") != place("other", "user-1")
    assert 0.0 <= place("homepage", "user-1") < 1.0


def test_weights_respected_over_10000_users(exp) -> None:
    n = 10_000
    counts = Counter(assign(exp, f"u{i}").arm for i in range(n))
    expected = {"control": 0.7, "b": 0.2, "c": 0.1}
    for arm, share in expected.items():
        assert abs(counts[arm] / n - share) < 0.015, counts
    # and no worse than chance: a chi-squared goodness of fit does not reject the weights
    p = chisquare([counts[a] for a in expected], [n * s for s in expected.values()]).pvalue
    assert p > 0.001, (counts, p)


def test_experiments_split_users_independently(exp) -> None:
    other = parse(TEXT.replace("homepage", "search")).active
    both = Counter((assign(exp, f"u{i}").arm, assign(other, f"u{i}").arm)
                   for i in range(10_000))
    # being in arm c of one experiment says nothing about the other: ~10% of c users in c
    in_c = sum(v for (a, _), v in both.items() if a == "c")
    assert abs(both[("c", "c")] / in_c - 0.1) < 0.03


def test_header_override(exp) -> None:
    assert forced(exp, "b") .arm == "b" and forced(exp, "b").forced
    assert forced(exp, "homepage:c").arm == "c"
    assert forced(exp, "search:c") is None  # for another experiment: ignored
    with pytest.raises(UnknownArm, match="no arm 'zzz'"):
        forced(exp, "zzz")
