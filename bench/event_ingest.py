"""Event ingest through one gateway process with `vidrec archive` keeping up, side by side: this
checkout against a baseline checkout of the code before (`--baseline`, a folder or a git ref).

For each repeat, the two codes alternate. Each gets its own redis-server (AOF everysec, as in
compose), the small test bundle loaded by its own `vidrec load`, `vidrec serve all` (one
process) and `vidrec archive`, all run from that checkout (PYTHONPATH). One client posts
pre-encoded batches of each size in `--batches` over HTTP, one at a time, for `--seconds`
(`--clients 1,3`: also with 3 clients posting at once, each on its own connection and thread,
so that the gateway never waits for a client's next request); then the archiver's lag on its
/metrics right after, and how long it takes to drain.

    .venv/bin/python -m bench.event_ingest --baseline 683a1eb [--seconds 10] [--repeats 3]
        [--batches 1000,100] [--clients 1] [--bundle PATH] [--port-base 18320] [--out FILE]

Reported per run: CPU time per event of each process (gateway, redis-server, archiver) over the
load and the drain, and from it the rate two idle cores could take (one gateway process runs
on one core; all three share the machine's cores); the wall-clock rate, which on a shared,
loaded box says more about the neighbours than about vidrec; and the load average around it.

Writes bench/results/event_ingest.json (medians per code, batch size and client count, every
run, load).
Ports: --port-base .. +2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psutil

from bench.metrics import sample

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "event_ingest.json"
PROCS = ("redis", "gateway", "archiver")


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


def _metric(port: int, name: str) -> float:
    value = sample(f"http://127.0.0.1:{port}/metrics", name, timeout_s=5, stream="events")
    return float("nan") if value is None else value


def _cpu(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}


def _checkout(baseline: str, tmp: Path) -> tuple[Path, str]:
    """The baseline's folder and commit: a folder as given, or a git ref checked out into a
    temporary worktree."""
    if Path(baseline).is_dir():
        folder = Path(baseline).resolve()
    else:
        folder = tmp / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder),
                        baseline], check=True, capture_output=True)
    commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return folder, commit


def _bodies(users: list[str], items: list[str], batch: int, count: int, tag: str) -> list[bytes]:
    """Pre-encoded request bodies, so the client spends its time sending, not building."""
    rng = random.Random(1)
    types = ("view", "view", "complete", "like", "skip")
    now = time.time()
    return [orjson.dumps({"events": [
        {"event_id": f"{tag}{b}-{j}", "user_id": rng.choice(users), "item_id": rng.choice(items),
         "type": rng.choice(types), "watch_fraction": 0.7, "timestamp": now + b * 1e-3}
        for j in range(batch)]}) for b in range(count)]


def one_run(code: str, folder: Path, bundle: Path, batches: list[int], seconds: float,
            tmp: Path, ports: tuple[int, int, int], clients: list[int]) -> list[dict]:
    from shared.bundle import Bundle

    redis_port, serve_port, archive_port = ports
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")},
           "PYTHONPATH": str(folder),
           "VIDREC_ARTIFACTS_DIR": str(bundle.parent), "VIDREC_BUNDLE": bundle.name,
           "VIDREC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "VIDREC_KEY_PREFIX": "vidrec:ingest", "VIDREC_EVENT_LOG": str(tmp / "log"),
           "VIDREC_STATE_DIR": str(tmp / "state"), "VIDREC_USE_GPU": "false",
           "VIDREC_ROLLOUT_FOLLOW": "false", "VIDREC_ARCHIVE_BATCH": "20000",
           "VIDREC_ADMIN_TOKEN": "bench-ingest", "VIDREC_ENVIRONMENT": "development",
           "VIDREC_MAX_BODY_BYTES": str(8 << 20), "PYTHONUNBUFFERED": "1"}
    vidrec = [sys.executable, "-m", "vidrec_cli"]
    procs = [subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                               "--dir", str(tmp)], stdout=subprocess.DEVNULL)]
    try:
        time.sleep(0.5)
        subprocess.run([*vidrec, "load"], env=env, cwd=folder, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b = Bundle(bundle)
        users, items = sorted(b.users()), [it["item_id"] for it in b.items]
        for name, argv, port in (("serve", ["serve", "all"], serve_port),
                                 ("archive", ["archive"], archive_port)):
            procs.append(subprocess.Popen([*vidrec, *argv, "--port", str(port)], env=env,
                                          cwd=folder, stdout=(tmp / f"{name}.log").open("wb"),
                                          stderr=subprocess.STDOUT))
        _wait(f"http://127.0.0.1:{serve_port}/readyz")
        _wait(f"http://127.0.0.1:{archive_port}/readyz")
        cpu = {n: psutil.Process(p.pid) for n, p in zip(PROCS, procs, strict=True)}
        runs = []
        base_url = f"http://127.0.0.1:{serve_port}"
        with _client(base_url) as http:
            for body in _bodies(users, items, 1000, 3, "warm"):
                http.post("/v1/events", content=body)
        for batch in batches:
            for n in clients:
                # enough bodies for 40,000 events/s; reused (as duplicates) if ever faster
                bodies = _bodies(users, items, batch, int(40_000 * seconds / batch) + 1,
                                 f"b{batch}c{n}-")
                runs.append(_load(base_url, cpu, bodies, batch, seconds, archive_port, code,
                                  n))
        return runs
    finally:
        for p in reversed(procs):
            _stop(p)


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=60,
                        headers={"content-type": "application/json"})


def _load(base_url: str, cpu: dict[str, psutil.Process], bodies: list[bytes], batch: int,
          seconds: float, archive_port: int, code: str, clients: int = 1) -> dict:
    load_before = os.getloadavg()[0]
    cpu0 = _cpu(cpu)
    next_body = itertools.count()  # shared by the clients: each body is posted once
    t0 = time.perf_counter()

    def post_until_done() -> tuple[int, int]:
        sent = failed = 0
        with _client(base_url) as http:
            while time.perf_counter() - t0 < seconds:
                r = http.post("/v1/events", content=bodies[next(next_body) % len(bodies)])
                if r.status_code == 200:
                    sent += batch
                else:
                    failed += 1
        return sent, failed

    with ThreadPoolExecutor(clients) as pool:
        counts = list(pool.map(lambda _: post_until_done(), range(clients)))
    sent, failed = (sum(c[i] for c in counts) for i in (0, 1))
    elapsed = time.perf_counter() - t0
    lag_entries = _metric(archive_port, "vidrec_archiver_lag_entries")
    lag_s = _metric(archive_port, "vidrec_archiver_lag_seconds")
    t1 = time.perf_counter()
    time.sleep(1.2)  # the gauge is refreshed by the archiver's next pass
    while _metric(archive_port, "vidrec_archiver_lag_entries") > 0 and \
            time.perf_counter() - t1 < 300:
        time.sleep(0.2)
    drain = time.perf_counter() - t1 - 1.2
    # CPU per event of each process (load + drain): what the box needs, busy or not
    used = _cpu(cpu)
    us = {f"{n}_cpu_us_per_event": round((used[n] - cpu0[n]) * 1e6 / max(sent, 1), 1)
          for n in PROCS}
    total = sum(us.values())
    capacity = min(1e6 / max(us["gateway_cpu_us_per_event"], 1e-9),
                   2 * 1e6 / max(total, 1e-9))
    return {"code": code, "batch": batch, "clients": clients, **us,
            "total_cpu_us_per_event": round(total, 1),
            "capacity_events_per_s_2_idle_cores": round(capacity),
            "events_per_s": round(sent / elapsed, 1), "events": sent, "failed_batches": failed,
            # posts past the prepared bodies repeat them: duplicates, cheaper than new events
            "repeated_batches": max(0, sent // batch + failed - len(bodies)),
            "seconds": round(elapsed, 2), "archiver_lag_entries_at_end": lag_entries,
            "archiver_lag_seconds_at_end": lag_s, "archiver_drain_s": round(max(drain, 0), 2),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default=None,
                    help="A checkout (folder) or git ref of the code to compare against.")
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batches", default="1000,100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", default="1",
                    help="Client counts posting at once, e.g. 1,3 (each a run of its own).")
    ap.add_argument("--port-base", type=int, default=18320)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    bundle = (args.bundle or next((REPO / "artifacts" / ".test-bundles").glob("*/latest")))
    bundle = bundle.resolve()
    batches = [int(b) for b in args.batches.split(",")]
    ports = (args.port_base, args.port_base + 1, args.port_base + 2)
    here = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    runs: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as keep:
        codes = [("current", REPO, here)]
        if args.baseline:
            folder, commit = _checkout(args.baseline, Path(keep))
            codes.insert(0, ("baseline", folder, commit))
        try:
            for _ in range(args.repeats):
                for code, folder, _commit in codes:
                    with tempfile.TemporaryDirectory() as tmp:
                        for run in one_run(code, folder, bundle, batches, args.seconds,
                                           Path(tmp), ports, clients):
                            print(json.dumps(run), flush=True)
                            runs.append(run)
        finally:
            if args.baseline and not Path(args.baseline).is_dir():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(Path(keep) / "baseline")], capture_output=True)
    keys = ("events_per_s", "gateway_cpu_us_per_event", "redis_cpu_us_per_event",
            "archiver_cpu_us_per_event", "total_cpu_us_per_event",
            "capacity_events_per_s_2_idle_cores", "archiver_lag_entries_at_end",
            "archiver_lag_seconds_at_end", "archiver_drain_s")
    medians: dict = {}
    for code, _folder, commit in codes:
        for batch in batches:
            for n in clients:
                mine = [r for r in runs
                        if r["code"] == code and r["batch"] == batch and r["clients"] == n]
                key = f"{code}/{batch}" if n == 1 else f"{code}/{batch}/{n}clients"
                medians[key] = {"commit": commit, "runs": len(mine), "clients": n, **{
                    k: statistics.median(r[k] for r in mine) for k in keys}}
    ratios = {}
    if args.baseline:
        for key in (k for k in medians if k.startswith("current/")):
            old, new = medians[key.replace("current/", "baseline/", 1)], medians[key]
            ratios[key.split("/", 1)[1]] = {
                "total_cpu_per_event_old_over_new": round(
                    old["total_cpu_us_per_event"] / new["total_cpu_us_per_event"], 2),
                "events_per_s_new_over_old": round(old["events_per_s"] and
                                                   new["events_per_s"] / old["events_per_s"], 2)}
    out = {"bundle": bundle.name, "batches": batches, "clients": clients,
           "seconds_per_run": args.seconds,
           "repeats": args.repeats, "cpus": os.cpu_count(),
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "medians": medians, "ratios": ratios, "runs": runs}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("medians", "ratios", "load_average_before",
                                          "load_average_after")}, indent=2))


if __name__ == "__main__":
    main()
