"""`vidrec serve` process settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.topology import BEHIND_GATEWAY, build_app, fit_ort_threads, usable_cpus
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]


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
    monkeypatch.setattr("services.topology.usable_cpus", lambda: cpus)
    settings = Settings(ort_intra_threads=configured)
    assert fit_ort_threads(settings, workers).ort_intra_threads == expected


def test_an_explicit_thread_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDREC_ORT_INTRA_THREADS", "2")
    monkeypatch.setattr("services.topology.usable_cpus", lambda: 2)
    assert fit_ort_threads(Settings(), 1).ort_intra_threads == 2


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", 2),        # no quota: the affinity mask
    ("100000 100000\n", 1),     # 1 CPU
    ("150000 100000\n", 2),     # 1.5 CPUs: rounded up
    ("800000 100000\n", 2),     # a quota above the mask: the mask
    (None, 2),                  # no cgroup v2 file
])
def test_usable_cpus_follow_the_cpu_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          cpu_max: str | None, expected: int) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    assert usable_cpus(tmp_path) == expected


def test_usable_cpus_follow_the_affinity_mask() -> None:
    """A process started on one CPU (taskset) counts one, whatever the host has."""
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                          "from services.topology import usable_cpus; print(usable_cpus())"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


def test_an_unknown_service_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        build_app(Settings(), "everything")


PROBE = """
import json, os, sys, threading
from services.topology import yield_cpu_to_gateway
from shared.settings import Settings
from tests.support import thread_niceness
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
nice = yield_cpu_to_gateway(Settings(behind_gateway_nice=int(sys.argv[2])), sys.argv[1])
after = threading.Thread(target=stop.wait); after.start()
print(json.dumps({"returned": nice, "threads": sorted(thread_niceness(os.getpid()).values())}))
stop.set()
"""


def _niceness_after_start(service: str, nice: int, started_at: int = 0) -> dict:
    argv = [sys.executable, "-c", PROBE, service, str(nice)]
    if started_at:
        argv = ["nice", "-n", str(started_at), *argv]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("service", BEHIND_GATEWAY)
def test_services_behind_the_gateway_yield_it_the_cpu(service: str) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    expected = max(own, 10)
    # threads started before the call (OpenBLAS's at import, say) and after it alike
    assert _niceness_after_start(service, 10) == {"returned": expected,
                                                   "threads": [expected] * 3}


@pytest.mark.parametrize("service", ["gateway", "all"])
def test_the_gateway_keeps_its_priority(service: str) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert _niceness_after_start(service, 10) == {"returned": own, "threads": [own] * 3}


def test_a_niceness_given_at_start_is_never_lowered() -> None:
    assert _niceness_after_start("ranking", 10, started_at=15)["threads"] == [15] * 3
    assert _niceness_after_start("ranking", 0)["threads"] == [os.getpriority(
        os.PRIO_PROCESS, 0)] * 3  # 0: off
