"""bench/serving.py's CPU per answered request, read from real processes."""

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
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.process_time() + 0.3\n"
                             "while time.process_time() < end: pass\n"
                             "time.sleep(60)"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    servers.procs += [("busy", busy), ("idle", idle)]
    try:
        start = servers.cpu_seconds()
        time.sleep(1.5)  # the busy one spends its 0.3 s, then sleeps
        used = {n: servers.cpu_seconds()[n] - start[n] for n in start}
    finally:
        servers.stop()
    assert used["busy"] > 0.1
    assert used["idle"] < 0.05
