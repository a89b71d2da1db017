"""A bundle reload under steady load, four services: what it costs the requests that arrive
meanwhile. What a team sees each time the learning loop publishes a bundle.

    .venv/bin/python -m bench.reload_under_load [--rate 100] [--duration 15] [--reload-at 4]
        [--repeats 3] [--compare NAME:VIDREC_VAR=V[,...]] [--direct NAME]

For every configuration (`--compare`, as in bench/overload.py; servers from another checkout
with VIDREC_BENCH_CHECKOUT), side by side and in alternating order, each repeat runs:
1. `steady`: open-loop load at `--rate` for `--duration` seconds;
2. `reload`: the same, and `--reload-at` seconds in, POST /admin/reload (the bundle being
   served, loaded again: retrieval, ranking, then the gateway's catalogue). A configuration
   named by `--direct` has the reload sent to retrieval and ranking themselves instead: a reload
   the gateway does not see (an operator calling a service, or replicas following a rollout
   with no gateway following it).
Per run: refusals (503), accepted p99, degraded share, client timeouts, the reload's duration,
and the gateway's admission limit polled every 0.25 s (its lowest value in the run). Medians
over the repeats per configuration and kind. Writes bench/results/reload_under_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.metrics import sample
from bench.overload import parse_configs, run_loadgen, start_all
from bench.serving import KEY_PREFIX, Servers, bench_users, ensure_loaded, free_port, warm_up

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "reload_under_load.json"
POLL_S = 0.25
RELOAD_TIMEOUT_S = 300.0
KEYS = ("refused", "accepted_p99_ms", "refused_p99_ms", "goodput_rps", "degraded_share",
        "client_timeouts", "limit_min", "reload_s", "load_avg_1m")


def reload(urls: dict[str, str], direct: bool, token: str) -> dict[str, Any]:
    """The reload, timed: through the gateway, or to retrieval and ranking themselves."""
    headers = {"Authorization": f"Bearer {token}"}
    targets = [urls["retrieval"], urls["ranking"]] if direct else [urls["gateway"]]
    started = time.perf_counter()
    statuses = []
    with httpx.Client(timeout=RELOAD_TIMEOUT_S) as http:
        for base in targets:
            statuses.append(http.post(f"{base}/admin/reload", headers=headers).status_code)
    return {"reload_s": round(time.perf_counter() - started, 2), "reload_statuses": statuses}


def one_run(urls: dict[str, str], users_file: Path, args: argparse.Namespace, seed: int,
            reload_too: bool, direct: bool, token: str) -> dict[str, Any]:
    """Load for `args.duration` s; meanwhile the gateway's limit is polled and, for a reload
    run, the reload is sent `args.reload_at` s in."""
    port = int(urls["gateway"].rsplit(":", 1)[1])
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def load() -> None:
        try:
            result.update(run_loadgen(port, users_file, args.rate, args.duration, seed))
        except BaseException as exc:  # reported in the main thread
            failure.append(exc)

    generator = threading.Thread(target=load)
    generator.start()
    began = time.monotonic()
    limits: list[float] = []
    told: dict[str, Any] = {}
    while generator.is_alive():
        limit = sample(f"{urls['gateway']}/metrics", "vidrec_admission_limit",
                       service="gateway")
        if limit is not None:
            limits.append(limit)
        if reload_too and not told and time.monotonic() - began >= args.reload_at:
            told = reload(urls, direct, token)  # blocks; the generator keeps sending
            continue
        time.sleep(POLL_S)
    generator.join()
    if failure:
        raise failure[0]
    result.update(told)
    result["limit_min"] = min(limits) if limits else None
    result["limit_after"] = limits[-1] if limits else None
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0, help="Requests per second, open loop.")
    p.add_argument("--duration", type=float, default=15.0, help="Seconds per run.")
    p.add_argument("--reload-at", type=float, default=4.0, help="Seconds into a reload run.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compare", action="append", default=[], metavar="NAME:VAR=V[,VAR=V]",
                   help="A configuration run side by side (repeatable), as in bench.overload.")
    p.add_argument("--direct", action="append", default=[], metavar="NAME",
                   help="Configurations whose reload goes to retrieval and ranking directly.")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    configs = parse_configs(args.compare)
    unknown = set(args.direct) - set(configs)
    if unknown:
        raise SystemExit(f"--direct {sorted(unknown)}: no such --compare configuration")
    if not 0 < args.reload_at < args.duration:
        raise SystemExit(f"--reload-at {args.reload_at} must be within --duration "
                         f"{args.duration}")

    from scripts.run_local import LocalRedis
    from shared.bundle import Bundle
    from shared.settings import get_settings

    settings = get_settings().model_copy(update={"key_prefix": KEY_PREFIX})
    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: this benchmark starts its own")
    own_redis = LocalRedis(free_port()).start()
    os.environ["VIDREC_REDIS_URL"] = own_redis.url
    settings = settings.model_copy(update={"redis_url": own_redis.url})
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidrec-reload-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    groups: list[Servers] = []
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c: {"steady": [], "reload": []} for c in configs}
    load_avg_start = round(os.getloadavg()[0], 2)
    try:
        ensure_loaded(settings)
        users = bench_users(bundle)
        users_file = work / "users.json"
        users_file.write_text(json.dumps(users))
        servers: dict[str, dict[str, str]] = {}
        for name, env in configs.items():
            print(f"[reload] starting {name} {env or '(settings as configured)'}", flush=True)
            groups.append(Servers(work))
            servers[name] = start_all(groups[-1], "four", env)
            warm_up(servers[name]["gateway"], users)
        for i in range(args.repeats):
            order = list(configs) if i % 2 == 0 else list(reversed(configs))
            for name in order:
                for kind in ("steady", "reload"):
                    r = one_run(servers[name], users_file, args, seed=10 * i + len(kind),
                                reload_too=kind == "reload", direct=name in args.direct,
                                token=settings.admin_token)
                    runs[name][kind].append(r)
                    print(f"[reload] {name} {kind} (run {i + 1}): refused {r['refused']}, "
                          f"accepted p99 {r['accepted_p99_ms']} ms, degraded "
                          f"{r['degraded_share']}, timeouts {r['client_timeouts']}, limit min "
                          f"{r['limit_min']}, reload {r.get('reload_s')} s, load "
                          f"{r['load_avg_1m']}", flush=True)
    finally:
        for group in groups:
            group.stop()
        own_redis.stop()
    medians = {name: {kind: {key: float(np.median([r[key] for r in rs if r.get(key) is not None]))
                             for key in KEYS if any(r.get(key) is not None for r in rs)}
                      for kind, rs in kinds.items()}
               for name, kinds in runs.items()}
    out = {"bundle": bundle.version, "rate": args.rate, "duration_s": args.duration,
           "reload_at_s": args.reload_at, "repeats": args.repeats, "configs": configs,
           "direct": args.direct, "machine": {"cpus": os.cpu_count(),
                                              "platform": platform.platform()},
           "command": " ".join(["python -m bench.reload_under_load",
                                *(argv if argv is not None else sys.argv[1:])]),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "load_avg_start": load_avg_start, "load_avg_end": round(os.getloadavg()[0], 2),
           "medians": medians, "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(medians, indent=1))
    print(f"[reload] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
