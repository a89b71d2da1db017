"""`vidrec serve` process settings."""

from __future__ import annotations

import pytest

from services.topology import build_app, fit_ort_threads
from shared.settings import Settings


@pytest.mark.parametrize("cpus, workers, configured, expected", [
    (2, 1, 2, 1),    # the event loop needs a core of its own
    (16, 1, 2, 2),   # room to spare: the configured number
    (16, 4, 8, 3),   # 4 cores per worker, one for its loop
    (1, 1, 2, 1),    # never below one
])
def test_onnxruntime_threads_fit_the_cores(monkeypatch: pytest.MonkeyPatch, cpus: int,
                                           workers: int, configured: int,
                                           expected: int) -> None:
    monkeypatch.delenv("VIDREC_ORT_INTRA_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    settings = Settings(ort_intra_threads=configured)
    assert fit_ort_threads(settings, workers).ort_intra_threads == expected


def test_an_explicit_thread_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDREC_ORT_INTRA_THREADS", "2")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert fit_ort_threads(Settings(), 1).ort_intra_threads == 2


def test_an_unknown_service_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        build_app(Settings(), "everything")
