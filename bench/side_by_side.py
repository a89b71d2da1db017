"""Two versions of the code serving side by side: what a change did to a whole request.

    .venv/bin/python -m bench.side_by_side --against /path/to/other/checkout \
        [--rate 190] [--block-s 15] [--rounds 4] [--together] [--out FILE.json]

One `vidrec serve all` per version (the other one from `--against`, a worktree of the older
commit, say), both up at once on the same bundle and Redis. The same open-loop load
(bench/serving.py's load generator) goes to each in turn, in blocks of `--block-s` seconds; the
order flips every round, so a machine that gets faster or slower within minutes weighs on both
alike. Per block: p50/p99 of the answered requests, how many were refused (admission control),
and the server's CPU milliseconds per answered request (user + system, from /proc), with the
1-minute load average beside it. The medians over the rounds are the result, with their ratio.

With `--together` both get the load at once instead (`--rate` each, so keep the sum within the
machine): the two servers then share every moment of the machine's state, which makes their CPU
per request the steadiest comparison; p99 is then of two servers competing for 2 cores.

A whole-request figure moves with the state of these shared machines by 2x from one day to the
next, and within minutes; measured this way, one run compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.serving import (
    CHECKOUT_VAR,
    KEY_PREFIX,
    Servers,
    bench_env,
    bench_users,
    cpu_per_request,
    ensure_loaded,
    free_port,
    run_loadgen,
    warm_up,
)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "side_by_side.json"


def git_head(checkout: Path) -> str:
    out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def dirty(checkout: Path) -> bool:
    out = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain",
                          "--untracked-files=no"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def block(servers: Servers, port: int, users_file: Path, rate: float, seconds: float) -> dict:
    before = servers.cpu_seconds()
    out = run_loadgen(port, users_file, rate, seconds)
    return described(out, cpu_per_request(before, servers.cpu_seconds(), out["ok"]))


def blocks_together(servers: dict[str, Servers], ports: dict[str, int], users_file: Path,
                    rate: float, seconds: float) -> dict[str, dict]:
    """Every version loaded at once, each by its own load generator process."""
    before = {name: s.cpu_seconds() for name, s in servers.items()}
    with ThreadPoolExecutor(len(servers)) as pool:
        running = {name: pool.submit(run_loadgen, ports[name], users_file, rate, seconds)
                   for name in servers}
        outs = {name: job.result() for name, job in running.items()}
    return {name: described(outs[name], cpu_per_request(
        before[name], servers[name].cpu_seconds(), outs[name]["ok"])) for name in servers}


def described(out: dict, cpu: dict[str, float]) -> dict:
    refused = out["error_kinds"].get("http_503", 0)
    return {"p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "answered": out["ok"],
            "refused": refused, "other_errors": out["errors"] - refused,
            "degraded": out["degraded"],
            "cpu_ms_per_request": cpu.get("total"), "load_1m": round(os.getloadavg()[0], 2)}


def medians(blocks: list[dict]) -> dict:
    keys = ("p50_ms", "p99_ms", "refused", "cpu_ms_per_request")
    return {k: round(statistics.median(b[k] for b in blocks), 2) for k in keys}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, type=Path,
                   help="The other checkout (a git worktree of the commit to compare with).")
    p.add_argument("--rate", type=float, default=190.0, help="Open-loop requests/s per block.")
    p.add_argument("--block-s", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--together", action="store_true",
                   help="Load every version at once (--rate each) instead of in turns.")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not (args.against / "vidrec_cli.py").is_file():
        raise SystemExit(f"--against {args.against}: not a vidrec checkout (no vidrec_cli.py)")

    from scripts.run_local import LocalRedis
    from shared.bundle import Bundle
    from shared.settings import get_settings

    own_redis = LocalRedis(free_port()).start()  # nothing else on this Redis stalls the reads
    os.environ["VIDREC_REDIS_URL"] = own_redis.url
    settings = get_settings().model_copy(update={"key_prefix": KEY_PREFIX,
                                                 "redis_url": own_redis.url})
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidrec-side-by-side-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    versions = {"this": REPO, "against": args.against.resolve()}
    servers = {name: Servers(work) for name in versions}
    ports: dict[str, int] = {}
    bundle_version = ""
    try:
        ensure_loaded(settings)
        bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
        bundle_version = bundle.version
        users = bench_users(bundle)
        users_file = work / "users.json"
        users_file.write_text(json.dumps(users))
        for name, checkout in versions.items():
            ports[name] = free_port()
            base = servers[name].start("all", ports[name],
                                       bench_env(**{CHECKOUT_VAR: str(checkout)}))
            servers[name].wait_ready(base)
            warm_up(base, users, 300)
        blocks: dict[str, list[dict]] = {name: [] for name in versions}
        for r in range(args.rounds):
            if args.together:
                done = blocks_together(servers, ports, users_file, args.rate, args.block_s)
            else:
                done = {name: block(servers[name], ports[name], users_file, args.rate,
                                    args.block_s)
                        for name in (list(versions) if r % 2 == 0 else list(reversed(versions)))}
            for name, b in done.items():
                blocks[name].append(b)
                print(f"[side-by-side] round {r + 1} {name}: {json.dumps(b)}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
        own_redis.stop()
    median = {name: medians(blocks[name]) for name in versions}
    result = {name: {"checkout": git_head(path), "uncommitted_changes": dirty(path),
                     "median": median[name], "blocks": blocks[name]}
              for name, path in versions.items()}
    this, against = median["this"], median["against"]
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.node(),
           "cpus": os.cpu_count(), "bundle": bundle_version, "rate_rps": args.rate,
           "block_s": args.block_s, "rounds": args.rounds,
           "load": "together" if args.together else "in turns", "versions": result,
           "ratio_this_to_against": {
               k: round(this[k] / against[k], 3) if against[k] else None
               for k in ("p99_ms", "cpu_ms_per_request")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("ratio_this_to_against",)}), flush=True)
    print(f"[side-by-side] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
