"""A/B simulation: does an experiment, run end to end over real HTTP, find the better model?

    .venv/bin/python -m bench.simulate [--users 20000] [--k 10] [--bundle artifacts/latest]

Serves the bundle (`vidrec serve all`, one process, a redis-server of its own) with an
experiments file of two arms, 50/50:

  popular  popularity only (sources = ["popular"], ranker = false): the control
  model    the full two-stage pipeline of the same bundle

Simulated users are the dataset's users with a held-out test item (the bundle's own
chronological leave-one-out split: the feature store holds their history up to it). Each asks
once for k recommendations, then acts on the answer and sends its events with the answer's
request_id and the item's position:

  noise model (documented in docs/experiments.md; the same for both arms)
  - the held-out item is in the list: played with probability 1 - p_miss (0.1), watch
    fraction ~ Beta(5, 2), and completed when that fraction is >= 0.9;
  - independently, with probability p_random (0.03) the user plays a random item of the list
    (a curiosity click, watch fraction ~ Beta(1, 3)): the baseline CTR every arm gets;
  - a user who played nothing skips the first item with probability p_skip (0.3);
  - with probability p_retry (0.05) a batch of events is sent twice (a client retry): the
    server must count it once.

The simulator knows which impressions it played, so the server's per-arm CTR must equal its
own count exactly (a check of attribution end to end). The report (bench/results/
experiment.json) holds GET /v1/experiments/<name> as the server answered it, the checks
(model arm ahead with p < 0.05; traffic split within 1 pp of the weights; server counts equal
the simulator's), and each arm's CTR@k next to the offline HR@k of the same bundle's
corresponding model (metrics.json: popularity and two_stage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "experiment.json"
EXPERIMENT = "sim"
CONTROL, MODEL = "popular", "model"
OFFLINE_MODEL = {CONTROL: "popularity", MODEL: "two_stage"}  # metrics.json names


@dataclass(frozen=True)
class Noise:
    p_miss: float = 0.1
    p_random: float = 0.03
    p_skip: float = 0.3
    p_retry: float = 0.05
    complete_at: float = 0.9


@dataclass
class Tally:
    """What the simulator itself saw, per arm (to check the server's numbers against)."""

    users: dict[str, int] = field(default_factory=dict)
    clicked: dict[str, int] = field(default_factory=dict)
    target_shown: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    retries: int = 0
    problems: list[str] = field(default_factory=list)
    degraded: int = 0

    def fail(self, problem: str) -> None:
        self.failures += 1
        if len(self.problems) < 10:
            self.problems.append(problem)

    def add(self, counter: dict[str, int], arm: str, n: int = 1) -> None:
        counter[arm] = counter.get(arm, 0) + n


def experiments_toml(k: int, weights: tuple[float, float]) -> str:
    return f"""\
# written by bench/simulate.py
[experiments.{EXPERIMENT}]
control = "{CONTROL}"
ctr_k = {k}
description = "popularity only vs the full two-stage model"

[experiments.{EXPERIMENT}.arms.{CONTROL}]
weight = {weights[0]}
sources = ["popular"]
ranker = false
candidates = {{ popular = 400 }}

[experiments.{EXPERIMENT}.arms.{MODEL}]
weight = {weights[1]}
"""


@dataclass(frozen=True)
class SimUser:
    user_id: str
    target: str               # the held-out test item
    history: list[str]        # everything before it (what the feature store is given)


def held_out_users(bundle_path: Path, data_dir: Path) -> list[SimUser]:
    """Every user the bundle's split can evaluate, with the held-out item and what precedes
    it (the bundle's users.json holds whole sequences: the served store knows everything)."""
    from offline.split import leave_one_out
    from shared.bundle import FIRST_ITEM_INDEX
    from shared.data import load_dataset

    manifest = json.loads((bundle_path / "manifest.json").read_text())
    ds = load_dataset(manifest["dataset_arg"], data_dir)
    if manifest.get("sample_users"):
        ds = ds.sample_users(manifest["sample_users"], manifest.get("seed", 42))
    split = leave_one_out(ds)
    ids = split.item_ids
    return [SimUser(split.users[u], ids[split.test[u] - FIRST_ITEM_INDEX],
                    [ids[i - FIRST_ITEM_INDEX] for i in split.history(u, "test").tolist()])
            for u in split.evaluable("test").tolist()]


def hold_out(settings, users: list[SimUser]) -> None:
    """Give the feature store each simulated user's history up to the held-out item only (so
    the item is neither filtered as seen nor known to the models' input)."""
    from services.feature_store.keys import Keys
    from services.feature_store.loader import write_users
    from shared.bundle import Bundle
    from shared.redis_conn import make_redis_sync

    bundle = Bundle.open(settings.artifacts_dir, settings.bundle)
    tags_of = {it["item_id"]: it.get("tags") or [] for it in bundle.items}
    r = make_redis_sync(settings)
    try:
        write_users(r, Keys(settings.key_prefix, settings.events_stream),
                    {u.user_id: u.history for u in users}, tags_of, settings.history_cap,
                    False)
    finally:
        r.close()


async def one_user(http: httpx.AsyncClient, sim: SimUser, k: int, noise: Noise,
                   rng: random.Random, tally: Tally) -> None:
    user, target = sim.user_id, sim.target
    r = await http.get(f"/v1/users/{user}/recommendations", params={"k": k})
    if r.status_code != 200:
        tally.fail(f"GET {r.status_code} {r.text[:200]}")
        return
    body = r.json()
    arm, request_id = body["arm"], body["request_id"]
    ids = [it["item_id"] for it in body["items"]]
    tally.add(tally.users, arm)
    tally.degraded += bool(body["degraded"])
    now = time.time()
    plays: dict[int, float] = {}  # position -> watch fraction
    if target in ids:
        tally.add(tally.target_shown, arm)
        if rng.random() >= noise.p_miss:
            plays[ids.index(target)] = rng.betavariate(5, 2)
    if ids and rng.random() < noise.p_random:
        plays.setdefault(rng.randrange(len(ids)), rng.betavariate(1, 3))
    events = []
    for pos, wf in sorted(plays.items()):
        base = {"user_id": user, "item_id": ids[pos], "timestamp": now, "request_id": request_id,
                "position": pos}
        events.append({**base, "event_id": f"sim-{request_id}-{pos}-v", "type": "view",
                       "watch_fraction": round(wf, 4)})
        if wf >= noise.complete_at:
            events.append({**base, "event_id": f"sim-{request_id}-{pos}-c", "type": "complete",
                           "watch_fraction": round(wf, 4)})
    if not plays and ids and rng.random() < noise.p_skip:
        events.append({"user_id": user, "item_id": ids[0], "timestamp": now, "type": "skip",
                       "event_id": f"sim-{request_id}-0-s", "request_id": request_id,
                       "position": 0})
    if plays:
        tally.add(tally.clicked, arm)
    if not events:
        return
    tally.add(tally.events, arm, len(events))
    for _ in range(2 if rng.random() < noise.p_retry else 1):
        await send_events(http, events, tally)


async def send_events(http: httpx.AsyncClient, events: list[dict], tally: Tally) -> None:
    """As a front-end should: retry a 503 (events are idempotent on event_id)."""
    for attempt in range(5):
        try:
            e = await http.post("/v1/events", json={"events": events})
            if e.status_code == 200:
                return
            problem = f"POST /v1/events {e.status_code} {e.text[:200]}"
        except httpx.HTTPError as exc:
            problem = f"POST /v1/events {exc!r}"
        tally.retries += 1
        await asyncio.sleep(0.2 * 2 ** attempt)
    tally.fail(problem)


async def simulate(base: str, users: list[SimUser], k: int, noise: Noise, seed: int,
                   concurrency: int) -> tuple[Tally, float]:
    tally = Tally()
    rng = random.Random(seed)
    queue = list(users)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
        async def worker(wid: int) -> None:
            local = random.Random(rng.random())
            while queue:
                await one_user(http, queue.pop(), k, noise, local, tally)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally, time.perf_counter() - start


def wait_for_counts(base: str, tally: Tally, timeout_s: float = 30.0) -> dict:
    """The report once every impression and attributed play has reached Redis (both are
    written off the request path, so the last few land a moment after their answers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = httpx.get(f"{base}/v1/experiments/{EXPERIMENT}", timeout=30).json()
        got = {a["arm"]: (a["impressions"], a["clicked_impressions"]) for a in report["arms"]}
        want = {a: (tally.users.get(a, 0), tally.clicked.get(a, 0)) for a in got}
        if got == want or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def checks(report: dict, tally: Tally, weights: tuple[float, float]) -> dict:
    arms = {a["arm"]: a for a in report["arms"]}
    total = sum(weights)
    model = arms[MODEL]
    p = model["vs_control"]["ctr"]["p_value"]
    split = {name: abs(arms[name]["observed_share"] - w / total)
             for name, w in zip((CONTROL, MODEL), weights, strict=True)}
    counts_match = all(arms[a]["impressions"] == tally.users.get(a, 0)
                       and arms[a]["clicked_impressions"] == tally.clicked.get(a, 0)
                       for a in (CONTROL, MODEL))
    return {
        "model_ahead_p_below_0.05": bool(p is not None and p < 0.05
                                         and model["ctr"]["value"] > arms[CONTROL]["ctr"]["value"]),
        "ctr_p_value": p,
        "split_within_1pp": all(d <= 0.01 for d in split.values()),
        "split_deviation_pp": {a: round(d * 100, 3) for a, d in split.items()},
        "server_counts_equal_simulator": counts_match,
        "no_failed_requests": tally.failures == 0,
    }


def offline_hr(bundle_path: Path, k: int) -> dict:
    path = bundle_path / "metrics.json"
    if not path.is_file():
        return {}
    models = json.loads(path.read_text()).get("models", {})
    return {arm: models.get(name, {}).get(f"HR@{k}") for arm, name in OFFLINE_MODEL.items()}


def run(bundle_path: Path, data_dir: Path, *, users: int, k: int, weights: tuple[float, float],
        noise: Noise, seed: int, concurrency: int, redis_url: str | None,
        key_prefix: str, workdir: Path) -> dict:
    from bench.serving import Servers
    from scripts.run_local import LocalRedis
    from services.feature_store.loader import load_bundle
    from shared.settings import Settings
    from tests.support import free_port

    everyone = held_out_users(bundle_path, data_dir)
    rng = random.Random(seed)
    chosen = everyone if users <= 0 or users >= len(everyone) else rng.sample(everyone, users)
    own_redis = None
    if not redis_url:
        (workdir / "redis").mkdir(exist_ok=True)
        own_redis = LocalRedis(free_port(), workdir / "redis").start()
    redis = redis_url or own_redis.url
    servers = None
    try:
        settings = Settings(artifacts_dir=bundle_path.parent, bundle=bundle_path.name,
                            redis_url=redis, key_prefix=key_prefix, data_dir=data_dir)
        t0 = time.perf_counter()
        load_bundle(settings, bundle_path.name, progress=False)
        hold_out(settings, chosen)
        load_s = time.perf_counter() - t0
        exp_file = workdir / "experiments.toml"
        exp_file.write_text(experiments_toml(k, weights))
        env = {key: v for key, v in os.environ.items() if not key.startswith("VIDREC_")}
        env.update({"VIDREC_ARTIFACTS_DIR": str(bundle_path.parent),
                    "VIDREC_BUNDLE": bundle_path.name, "VIDREC_REDIS_URL": redis,
                    "VIDREC_KEY_PREFIX": key_prefix, "VIDREC_EXPERIMENTS_FILE": str(exp_file),
                    "VIDREC_STATE_DIR": str(workdir / "state"), "VIDREC_USE_GPU": "false",
                    "PYTHONUNBUFFERED": "1",
                    "VIDREC_ENVIRONMENT": "development",  # the default admin token: a bench
                    # A busy 2-core machine must not turn answers into degraded fallbacks:
                    # this measures the models, not the time limits.
                    "VIDREC_TIMEOUT_HYDRATE_S": "2", "VIDREC_TIMEOUT_RETRIEVE_S": "2",
                    "VIDREC_TIMEOUT_SCORE_S": "2", "VIDREC_TIMEOUT_ITEMS_S": "2"})
        servers = Servers(workdir)
        url = servers.start("all", free_port(), env)
        servers.wait_ready(url)
        tally, seconds = asyncio.run(simulate(url, chosen, k, noise, seed, concurrency))
        report = wait_for_counts(url, tally)
    finally:
        if servers is not None:
            servers.stop()
        if own_redis is not None:
            own_redis.stop()
    hr = offline_hr(bundle_path, k)
    arms = {a["arm"]: a for a in report["arms"]}
    return {
        "bundle": bundle_path.name, "dataset": json.loads(
            (bundle_path / "manifest.json").read_text()).get("dataset_arg"),
        "users_simulated": len(chosen), "users_available": len(everyone), "k": k,
        "weights": {CONTROL: weights[0], MODEL: weights[1]},
        "noise_model": noise.__dict__,
        "checks": checks(report, tally, weights),
        "ctr_vs_offline": {a: {"simulated_ctr@k": arms[a]["ctr"]["value"],
                               "ctr_ci95": arms[a]["ctr"]["ci95"],
                               "target_shown_share": round(tally.target_shown.get(a, 0)
                                                           / max(1, tally.users.get(a, 0)), 5),
                               f"offline_HR@{k}": hr.get(a),
                               "offline_model": OFFLINE_MODEL[a]} for a in (CONTROL, MODEL)},
        "simulator": {"users": tally.users, "clicked": tally.clicked,
                      "target_shown": tally.target_shown, "events": tally.events,
                      "failures": tally.failures, "problems": tally.problems,
                      "event_retries": tally.retries, "degraded_answers": tally.degraded,
                      "seconds": round(seconds, 1),
                      "requests_per_s": round(len(chosen) / seconds, 1),
                      "redis_load_s": round(load_s, 1)},
        "report": report,
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in
                                                             os.getloadavg()],
                    "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "artifacts" / "latest"),
                   help="Bundle folder (default artifacts/latest).")
    p.add_argument("--data-dir", default=os.environ.get("VIDREC_DATA_DIR",
                                                        str(REPO.parent / "shared" / "datasets")))
    p.add_argument("--users", type=int, default=20_000, help="0: every held-out user.")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--weights", default="50,50", help="popular,model traffic weights")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--redis-url", default=None,
                   help="Use this Redis (with --key-prefix) instead of a redis-server of its own.")
    p.add_argument("--key-prefix", default="vidrec:sim")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    bundle = Path(args.bundle).resolve()
    weights = tuple(float(w) for w in args.weights.split(","))
    with tempfile.TemporaryDirectory(prefix="vidrec-sim-") as tmp:
        result = run(bundle, Path(args.data_dir), users=args.users, k=args.k,
                     weights=weights, noise=Noise(), seed=args.seed,
                     concurrency=args.concurrency, redis_url=args.redis_url,
                     key_prefix=args.key_prefix, workdir=Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"checks": result["checks"], "ctr_vs_offline": result["ctr_vs_offline"],
                      "simulator": result["simulator"]}, indent=2))
    print(f"wrote {out}")
    return 0 if all(v for key, v in result["checks"].items()
                    if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
