"""Event ingest through one gateway process, side by side: the per-event Lua path (before) and
the one-call-per-batch path (VIDREC_EVENTS_BATCH_SCRIPT), with `vidrec archive` running.

For each path, alternating, `--repeats` times: its own redis-server (AOF everysec, as in
compose), the small test bundle loaded, `vidrec serve all` (one process) and `vidrec archive`;
one client posts batches of `--batch` events over HTTP for `--seconds`; then the archiver's lag
(from its /metrics) right after the load, and how long it takes to drain.

    .venv/bin/python -m bench.event_ingest [--bundle PATH] [--seconds 15] [--batch 1000]

Also the CPU time each process (gateway, redis-server, archiver) spent per event during the
run and the drain, and from it the rate the machine's cores could take when nobody else uses
them (one gateway process is limited to one core). On a shared, overloaded box the wall-clock
rate says more about the neighbours than about vidrec; the CPU cost does not.

Writes bench/results/event_ingest.json (medians, all runs, load average). Ports 18320-18329.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "event_ingest.json"
BIN = Path(sys.executable).parent
REDIS_PORT, SERVE_PORT, ARCHIVE_PORT = 18320, 18321, 18322


def _wait(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _lag() -> float:
    text = httpx.get(f"http://127.0.0.1:{ARCHIVE_PORT}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('vidrec_archiver_lag_entries{stream="events"}'):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def one_run(batch_script: bool, bundle: Path, seconds: float, batch: int, tmp: Path) -> dict:
    from services.feature_store.loader import load_bundle
    from shared.bundle import Bundle
    from shared.settings import Settings

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")},
           "VIDREC_ARTIFACTS_DIR": str(bundle.parent), "VIDREC_BUNDLE": bundle.name,
           "VIDREC_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
           "VIDREC_KEY_PREFIX": "vidrec:ingest", "VIDREC_EVENT_LOG": str(tmp / "log"),
           "VIDREC_STATE_DIR": str(tmp / "state"), "VIDREC_USE_GPU": "false",
           "VIDREC_EVENTS_BATCH_SCRIPT": "true" if batch_script else "false",
           "VIDREC_ROLLOUT_FOLLOW": "false", "VIDREC_ARCHIVE_BATCH": "5000",
           "VIDREC_ADMIN_TOKEN": "bench-ingest",
           "VIDREC_MAX_BODY_BYTES": str(8 << 20), "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                               "--dir", str(tmp)], stdout=subprocess.DEVNULL)]
    try:
        time.sleep(0.5)
        settings = Settings(artifacts_dir=bundle.parent, bundle=bundle.name,
                            redis_url=env["VIDREC_REDIS_URL"], key_prefix="vidrec:ingest")
        load_bundle(settings, bundle.name, progress=False)
        b = Bundle(bundle)
        users, items = sorted(b.users()), [it["item_id"] for it in b.items]
        procs.append(subprocess.Popen([str(BIN / "vidrec"), "serve", "all", "--port",
                                       str(SERVE_PORT)], env=env, stdout=(tmp / "serve.log")
                                      .open("wb"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([str(BIN / "vidrec"), "archive", "--port",
                                       str(ARCHIVE_PORT)], env=env, stdout=(tmp / "archive.log")
                                      .open("wb"), stderr=subprocess.STDOUT))
        _wait(f"http://127.0.0.1:{SERVE_PORT}/readyz")
        _wait(f"http://127.0.0.1:{ARCHIVE_PORT}/readyz")
        cpu = {name: psutil.Process(p.pid) for name, p in
               zip(("redis", "gateway", "archiver"), procs, strict=True)}
        rng = random.Random(1)
        k, sent, failed = 0, 0, 0
        types = ("view", "view", "complete", "like", "skip")
        with httpx.Client(base_url=f"http://127.0.0.1:{SERVE_PORT}", timeout=60) as http:
            for _ in range(3):  # warm-up
                http.post("/v1/events", json={"events": [
                    {"event_id": f"w{k}-{j}", "user_id": rng.choice(users),
                     "item_id": rng.choice(items), "type": "view", "timestamp": time.time()}
                    for j in range(batch)]})
                k += 1
            t0 = time.perf_counter()
            cpu0 = {n: sum(p.cpu_times()[:2]) for n, p in cpu.items()}
            while time.perf_counter() - t0 < seconds:
                events = [{"event_id": f"b{k}-{j}", "user_id": rng.choice(users),
                           "item_id": rng.choice(items), "type": rng.choice(types),
                           "watch_fraction": 0.7, "timestamp": time.time()}
                          for j in range(batch)]
                k += 1
                r = http.post("/v1/events", json={"events": events})
                if r.status_code == 200:
                    sent += batch
                else:
                    failed += 1
            elapsed = time.perf_counter() - t0
        lag_at_end = _lag()
        t1 = time.perf_counter()
        while _lag() > 0 and time.perf_counter() - t1 < 300:
            time.sleep(0.2)
        # CPU per event of each process (load + drain): what the box would need, busy or not
        us = {f"{n}_cpu_us_per_event": round((sum(p.cpu_times()[:2]) - cpu0[n]) * 1e6 / sent, 1)
              for n, p in cpu.items()}
        total = sum(us.values())
        # one gateway process runs on one core; all three share the machine's cores
        capacity = min(1e6 / us["gateway_cpu_us_per_event"],
                       (os.cpu_count() or 1) * 1e6 / total)
        return {**us, "capacity_events_per_s_from_cpu": round(capacity),
                "batch_script": batch_script, "events_per_s": round(sent / elapsed, 1),
                "events": sent, "failed_batches": failed, "seconds": round(elapsed, 2),
                "archiver_lag_at_end": lag_at_end,
                "archiver_drain_s": round(time.perf_counter() - t1, 2),
                "archiver_events_per_s_overall": round(sent / (elapsed + time.perf_counter()
                                                               - t1), 1)}
    finally:
        for p in reversed(procs):
            _stop(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bundle = args.bundle or next((REPO / "artifacts" / ".test-bundles").glob("*/latest"))
    bundle = bundle.resolve()
    runs = []
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for batch_script in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                run = one_run(batch_script, bundle, args.seconds, args.batch, Path(tmp))
                print(run, flush=True)
                runs.append(run)
    out = {"bundle": bundle.name, "batch": args.batch, "seconds_per_run": args.seconds,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "cpus": os.cpu_count(), "runs": runs}
    for name, flag in (("per_event_script", False), ("batch_script", True)):
        mine = [r for r in runs if r["batch_script"] is flag]
        out[name] = {k: statistics.median(r[k] for r in mine)
                     for k in ("events_per_s", "archiver_lag_at_end", "archiver_drain_s",
                          "gateway_cpu_us_per_event", "redis_cpu_us_per_event",
                          "archiver_cpu_us_per_event", "capacity_events_per_s_from_cpu")}
    out["speedup"] = round(out["batch_script"]["events_per_s"] /
                           out["per_event_script"]["events_per_s"], 2)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("per_event_script", "batch_script", "speedup",
                                           "load_average_before")}, indent=2))


if __name__ == "__main__":
    main()
