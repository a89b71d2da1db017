"""bench/serving.py: CPU per answered request, read from real processes; the users it asks for."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.serving import Servers, cpu_per_request


def test_cpu_per_request_divides_each_process_and_adds_them_up() -> None:
    before = {"gateway": 1.0, "ranking": 2.0}
    after = {"gateway": 1.5, "ranking": 2.25}
    assert cpu_per_request(before, after, 100) == {"gateway": 5.0, "ranking": 2.5, "total": 7.5}
    assert cpu_per_request(before, after, 0) == {}  # nothing answered: no figure, not inf


def test_servers_read_the_cpu_their_processes_spend(tmp_path: Path) -> None:
    servers = Servers(tmp_path)
    # Each child says when its interpreter is up, so that its start-up CPU is not counted.
    busy = subprocess.Popen([sys.executable, "-c",
                             "import sys, time\nprint('up', flush=True)\nsys.stdin.readline()\n"
                             "end = time.process_time() + 0.3\n"
                             "while time.process_time() < end: pass\n"
                             "time.sleep(60)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    idle = subprocess.Popen([sys.executable, "-c",
                             "import time\nprint('up', flush=True)\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    servers.procs += [("busy", busy), ("idle", idle)]
    try:
        assert busy.stdout is not None and idle.stdout is not None and busy.stdin is not None
        assert busy.stdout.readline().strip() == "up" and idle.stdout.readline().strip() == "up"
        start = servers.cpu_seconds()
        busy.stdin.write("go\n")
        busy.stdin.flush()
        deadline = time.monotonic() + 30
        while servers.cpu_seconds()["busy"] - start["busy"] < 0.28 and time.monotonic() < deadline:
            time.sleep(0.05)
        used = {n: servers.cpu_seconds()[n] - start[n] for n in start}
    finally:
        servers.stop()
    assert used["busy"] >= 0.28  # its 0.3 s of spinning, read in clock ticks (10 ms)
    assert used["idle"] < 0.05


def test_the_benchmarks_users_are_a_fixed_sample_of_those_with_a_history(
        small_bundle: Path) -> None:
    from bench.serving import bench_users
    from shared.bundle import Bundle

    bundle = Bundle.open(small_bundle.parent, small_bundle.name)
    with_history = {u for u, seq in bundle.users().items() if seq}
    assert len(with_history) < 5000  # ml-latest-small: fewer users than the sample asks for
    assert sorted(bench_users(bundle)) == sorted(with_history)
    assert bench_users(bundle, 50) == bench_users(bundle, 50)
    assert len(bench_users(bundle, 50)) == 50 and set(bench_users(bundle, 50)) <= with_history
