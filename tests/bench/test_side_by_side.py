"""bench/side_by_side.py: what it makes of the load generator's answer, and a wrong --against."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.side_by_side import described, main, medians


def loadgen_answer(ok: int, kinds: dict[str, int]) -> dict:
    return {"ok": ok, "errors": sum(kinds.values()), "error_kinds": kinds, "p50_ms": 5.0,
            "p99_ms": 20.0, "degraded": {}}


def test_refusals_are_the_503s_and_other_errors_are_kept_apart() -> None:
    b = described(loadgen_answer(95, {"http_503": 4, "timeout": 1}), {"all": 4.5, "total": 4.5})
    assert (b["answered"], b["refused"], b["other_errors"]) == (95, 4, 1)
    assert b["cpu_ms_per_request"] == 4.5 and b["p99_ms"] == 20.0


def test_medians_are_per_figure_over_the_blocks() -> None:
    blocks = [{"p50_ms": p, "p99_ms": 10 * p, "refused": r, "cpu_ms_per_request": c}
              for p, r, c in ((1.0, 0, 4.0), (3.0, 9, 5.0), (2.0, 1, 6.0))]
    assert medians(blocks) == {"p50_ms": 2.0, "p99_ms": 20.0, "refused": 1,
                               "cpu_ms_per_request": 5.0}


def test_against_must_be_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a vidrec checkout"):
        main(["--against", str(tmp_path)])
