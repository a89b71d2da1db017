"""Cost as the catalogue and the user base grow: MicroLens-50k (19,220 items, 50,000 users) against
synthetic datasets of 100k items / 50k users and 1M items / 1M users (shared/data/synthetic.py).

    vidrec data synth artifacts/synth/synth-100k --items 100000 --users 50000
    vidrec data synth artifacts/synth/synth-1m --items 1000000 --users 1000000
    vidrec build --dataset microlens-50k --version scale-20k ...        (see docs/scaling.md
    vidrec build --dataset artifacts/synth/synth-100k --version scale-100k ... for the flags)
    vidrec build --dataset artifacts/synth/synth-1m --version scale-1m --train-users 50000 ...
    .venv/bin/python -m bench.scale index            # FAISS kinds per size -> scale_index.json
    .venv/bin/python -m bench.scale serve            # services, Redis, load -> scale_serve.json
    .venv/bin/python -m bench.scale retrieval-only 1m   # retrieval alone -> scale_retrieval.json
    .venv/bin/python -m bench.scale side-by-side --rate 40  # 20k and 1m at one rate, interleaved
    .venv/bin/python -m bench.scale report           # -> bench/results/scale.json + scale.png

`index`: for the learned vectors (`index_ann`) and the content embeddings (`index_content`) of
each bundle, every index kind of shared/ann.py: build seconds, bytes (the serialised index, which
is what it holds in memory), recall@100 against exact search, and one query's median latency on
one thread. Queries are real: user vectors from the bundle's query encoder over 1,000 users'
histories for `ann`, and those users' last item's embedding for `content`.

`serve`: per bundle, with a redis-server of the bench's own (port 18400-18499, stopped by pid):
`vidrec load` wall time; Redis bytes per user and per item (MEMORY USAGE of sampled keys, and
the used_memory growth over the whole load); retrieval, ranking, gateway (four processes over
HTTP) and one-process `serve all` start-up (spawn to /readyz = 200) and resident memory (VmRSS
after warm-up, VmHWM peak); then the one-process gateway's capacity (the highest open-loop rate
it sustains with >= 95% answered and p99 under 1 s, rates doubling from 25 req/s) and its
latency at half that capacity (3 runs, the run with the median p99 kept).

Every number is one run on a 2-core machine shared with other work: the load average is stored
beside each measurement (`uptime`), and the ratios measured side by side are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ARTIFACTS = REPO / "artifacts"
BUNDLES = {"20k": "scale-20k", "100k": "scale-100k", "1m": "scale-1m"}
KEY_PREFIX = "vidrec:scale"
REDIS_PORT = 18411
K_RECALL = 100
QUERIES = 1000
LATENCY_QUERIES = 200
KINDS = {"ann": ("flat", "hnsw", "ivf_sq8", "ivf_pq"),
         "content": ("flat", "hnsw", "ivf_sq8", "ivf_pq")}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bundle_path(name: str) -> Path:
    return ARTIFACTS / BUNDLES[name]


def available(names: list[str] | None) -> list[str]:
    wanted = names or list(BUNDLES)
    return [n for n in wanted if (bundle_path(n) / "manifest.json").is_file()]


# ---- index ---------------------------------------------------------------------------------
def queries_for(bundle_dir: Path, n: int = QUERIES, seed: int = 0) -> dict[str, np.ndarray]:
    """Real queries: user vectors (query encoder over real histories) and those users' last
    watched item's content embedding."""
    import onnxruntime as ort

    from shared.bundle import FIRST_ITEM_INDEX

    items = json.loads((bundle_dir / "items.json").read_text())
    row_of = {it["item_id"]: r for r, it in enumerate(items)}
    users = json.loads((bundle_dir / "users.json").read_text())
    del items
    rng = random.Random(seed)
    picked = rng.sample([s for s in users.values() if s], min(n, len(users)))
    del users
    info = json.loads((bundle_dir / "model.json").read_text())
    length = min(int(info["max_history"]), max(len(s) for s in picked))
    content = np.load(bundle_dir / "content_embeddings.npy", mmap_mode="r")
    ids = np.zeros((len(picked), length), np.int64)
    hist_content = np.zeros((len(picked), length, content.shape[1]), np.float32)
    last = np.empty(len(picked), np.int64)
    for b, seq in enumerate(picked):
        rows = np.array([row_of[i] for i in seq[-length:]], np.int64)
        ids[b, length - len(rows):] = rows + FIRST_ITEM_INDEX
        hist_content[b, length - len(rows):] = content[rows]
        last[b] = rows[-1]
    sess = ort.InferenceSession(str(bundle_dir / "query_encoder.onnx"),
                                providers=["CPUExecutionProvider"])
    user_vecs = np.concatenate([sess.run(None, {"hist_ids": ids[i:i + 100],
                                                "hist_content": hist_content[i:i + 100]})[0]
                                for i in range(0, len(picked), 100)])
    return {"ann": user_vecs.astype(np.float32),
            "content": np.ascontiguousarray(content[np.sort(last)], dtype=np.float32)}


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K_RECALL,
              chunk: int = 100_000) -> np.ndarray:
    """Exact inner-product top-k by blocks (no second copy of the rows, as a flat index is)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(vectors), chunk):
        block = np.asarray(vectors[lo:lo + chunk], np.float32)
        s = queries @ block.T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + lo], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def run_index_synthetic(folder: Path, kinds: tuple[str, ...]) -> dict:
    """Content-embedding indexes over a synthetic dataset's embeddings.npy (before any bundle
    exists): queries are 1,000 random rows with a little noise; truth by exact_top."""
    x = np.load(folder / "embeddings.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    q = np.asarray(x[np.sort(rng.choice(len(x), QUERIES, replace=False))], np.float32)
    q += 0.05 * rng.standard_normal(q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    start = time.perf_counter()
    truth = exact_top(x, q)
    exact_s = time.perf_counter() - start
    rows = np.ascontiguousarray(x, dtype=np.float32)
    out = {"items": len(rows), "dim": int(rows.shape[1]), "queries": QUERIES,
           "exact_by_blocks_s_for_all_queries": round(exact_s, 2),
           **index_one(rows, q, kinds, truth=truth)}
    return out


def index_one(vectors: np.ndarray, queries: np.ndarray, kinds: tuple[str, ...],
              truth: np.ndarray | None = None) -> dict:
    import faiss

    from shared import ann

    out: dict = {}
    faiss.omp_set_num_threads(1)  # a shared 2-core box: OpenMP teams spin against other work
    for kind in kinds:
        load = load_avg()
        start = time.perf_counter()
        index = ann.build_index(vectors, kind=kind)
        build_s = time.perf_counter() - start
        nbytes = int(faiss.serialize_index(index).nbytes)
        _, got = index.search(queries, K_RECALL)
        if kind == "flat":
            truth = got
        faiss.omp_set_num_threads(1)  # the service searches one query on one thread
        times = []
        for q in queries[:LATENCY_QUERIES]:
            t0 = time.perf_counter()
            index.search(q[None], K_RECALL)
            times.append(time.perf_counter() - t0)
        faiss.omp_set_num_threads(1)  # a shared 2-core box: OpenMP teams spin against other work
        hits = sum(len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got,
                                                                            strict=True))
        out[kind] = {"build_s": round(build_s, 2), "bytes": nbytes,
                     "bytes_per_item": round(nbytes / len(vectors), 1),
                     f"recall@{K_RECALL}": round(hits / truth.size, 4),
                     "query_ms_p50": round(1000 * statistics.median(times), 3),
                     "query_ms_p99": round(1000 * float(np.percentile(times, 99)), 3),
                     "load_before": load, "load_after": load_avg()}
        print(f"[index] {kind}: {json.dumps(out[kind])}", flush=True)
        del index
    return out


def run_index(names: list[str], skip: set[str]) -> dict:
    doc = {}
    for name in names:
        bdir = bundle_path(name)
        queries = queries_for(bdir)
        vectors = {"ann": np.load(bdir / "item_vectors.npy"),
                   "content": np.load(bdir / "content_embeddings.npy")}
        doc[name] = {"items": int(len(vectors["ann"])), "queries": len(queries["ann"])}
        for which in ("ann", "content"):
            kinds = tuple(k for k in KINDS[which] if f"{name}:{which}:{k}" not in skip)
            print(f"[index] {name} {which} {vectors[which].shape} kinds {kinds}", flush=True)
            doc[name][which] = {"dim": int(vectors[which].shape[1]),
                                **index_one(vectors[which], queries[which], kinds)}
        del vectors
        _write(RESULTS / "scale_index.json", doc)
    return doc


# ---- serve ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds a process has used (load-independent, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def proc_memory(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def redis_facts(url: str, bundle_dir: Path, sample: int = 2000) -> dict:
    import redis

    from services.feature_store.keys import Keys

    r = redis.Redis.from_url(url)
    keys = Keys(KEY_PREFIX, "vidrec:scale:events")
    users = json.loads((bundle_dir / "users.json").read_text())
    user_ids = random.Random(1).sample(list(users), min(sample, len(users)))
    n_users, interactions = len(users), sum(len(s) for s in users.values())
    del users
    items = json.loads((bundle_dir / "items.json").read_text())
    item_ids = [it["item_id"] for it in random.Random(2).sample(items, min(sample, len(items)))]
    n_items = len(items)
    del items
    per_user = []  # users the (possibly stopped) load wrote: their history key exists
    for u in user_ids + _users_sample(bundle_dir, sample):
        sizes = [r.memory_usage(k, samples=0) for k in keys.user_keys(u)]
        if sizes[0] is not None and len(per_user) < sample:
            per_user.append(sum(int(x or 0) for x in sizes))
    per_item = [int(r.memory_usage(keys.item(i), samples=0) or 0) for i in item_ids]
    info = r.info("memory")
    r.close()
    return {"users": n_users, "items": n_items, "interactions": interactions,
            "used_memory": int(info["used_memory"]),
            "bytes_per_user_mean": round(float(np.mean(per_user)), 1),
            "bytes_per_user_p99": round(float(np.percentile(per_user, 99)), 1),
            "bytes_per_item_mean": round(float(np.mean(per_item)), 1),
            "sampled_users": len(per_user), "sampled_items": len(per_item)}


def timed_start(servers, service: str, port: int, env: dict) -> dict:
    start = time.perf_counter()
    url = servers.start(service, port, env)
    servers.wait_ready(url, timeout_s=600)
    seconds = time.perf_counter() - start
    pid = servers.procs[-1][1].pid
    return {"url": url, "pid": pid, "startup_s": round(seconds, 2),
            "startup_cpu_s": cpu_seconds(pid)}


def memory_after(servers, started: dict) -> dict:
    return {name: {"startup_s": s["startup_s"], "startup_cpu_s": s["startup_cpu_s"],
                   **proc_memory(s["pid"])} for name, s in started.items()}


def find_capacity(port: int, users_file: Path, start_rate: float = 20.0,
                  duration: float = 8.0) -> tuple[float, list[dict]]:
    """The highest open-loop rate answered >= 95% with p99 < 1 s: rates double from
    start_rate while they pass (halve while they fail), then one step between the last
    passing and the first failing rate."""
    from bench.serving import run_loadgen

    steps: list[dict] = []

    def probe(rate: float) -> bool:
        res = run_loadgen(port, users_file, rate, duration)
        ok = res["ok"] >= 0.95 * res["sent"] and res["p99_ms"] < 1000
        steps.append({"rate": rate, "ok": ok, "achieved_rps": res["achieved_rps"],
                      "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                      "errors": res["errors"], "load": load_avg()})
        print(f"[serve] capacity probe {rate:g} req/s: {json.dumps(steps[-1])}", flush=True)
        return ok

    rate = start_rate
    if probe(rate):
        good, bad = rate, None
        while bad is None and rate < 3200:
            rate *= 2
            good, bad = (rate, None) if probe(rate) else (good, rate)
    else:
        good, bad = 0.0, rate
        while not good and rate > 1:
            rate /= 2
            good, bad = (rate, bad) if probe(rate) else (0.0, rate)
    if good and bad:
        mid = (good + bad) / 2
        if probe(mid):
            good = mid
    return good, steps


def write_sample(url: str, bdir: Path) -> None:
    """Every item's meta and the 5,000 sampled users, with the loader's own functions."""
    import redis as redis_lib

    from services.feature_store.keys import Keys
    from services.feature_store.loader import with_clusters, write_items, write_users
    from shared.bundle import Bundle
    from shared.tags import TagClusters

    r = redis_lib.Redis.from_url(url)
    keys = Keys(KEY_PREFIX, "vidrec:scale:events")
    bundle = Bundle(bdir)
    items = with_clusters(bundle.items, TagClusters.load(bdir))
    write_items(r, keys, items, progress=False)
    users = bundle.users()
    tags_of = {it["item_id"]: it.get("clusters") or it.get("tags") or [] for it in items}
    write_users(r, keys, {u: users[u] for u in _users_sample(bdir)}, tags_of, 200,
                progress=False)
    r.close()


def timed_load(env: dict, redis, bdir: Path, limit_s: float) -> dict:
    """`vidrec load` with a time limit. Past it the load is stopped (by pid), the users it
    wrote are counted and the rest of the wall time is extrapolated at the measured rate
    (the loader writes users at a constant rate after the items); the 5,000 users the
    latency runs ask for are then written by the loader's own functions."""
    import resource

    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis.url)
    out: dict = {"load_before_vidrec_load": load_avg()}
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "vidrec_cli", "load"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(limit_s)
        finished = True
    except subprocess.TimeoutExpired:
        cpu_s = cpu_seconds(proc.pid)
        proc.kill()
        proc.wait()
        finished = False
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["vidrec_load_finished"] = finished
    out["vidrec_load_cpu_s"] = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime
                                     - ru0.ru_stime, 2) if finished else cpu_s
    out["redis_server_cpu_s_after_load"] = cpu_seconds(redis.proc.pid)
    out["load_after_vidrec_load"] = load_avg()
    if finished:
        out["vidrec_load_s"] = round(wall, 2)
        r.close()
        return out
    users = json.loads((bdir / "users.json").read_text())
    from services.feature_store.keys import Keys
    from services.feature_store.loader import write_users

    keys = Keys(KEY_PREFIX, "vidrec:scale:events")
    written = sum(1 for _ in r.scan_iter(match=keys.user_keys("*")[0], count=10_000))
    out["vidrec_load_stopped_after_s"] = round(wall, 2)
    out["vidrec_load_users_written"] = written
    out["vidrec_load_s_extrapolated"] = round(wall * len(users) / max(written, 1), 1)
    sample = _users_sample(bdir)
    items = {it["item_id"]: it.get("tags") or []
             for it in json.loads((bdir / "items.json").read_text())}
    write_users(r, keys, {u: users[u] for u in sample}, items, 200, progress=False)
    r.close()
    return out


def load_only(folder: Path, version: str, limit_s: float) -> dict:
    """`vidrec load` of a synthetic dataset without building it: items.json (popularity =
    interactions) and users.json written as a build writes them, into a bundle folder holding
    only what the loader reads; then timed_load and redis_facts against a redis-server of the
    bench's own. Separates the feature store's cost from the model build at 1M users."""
    from scripts.run_local import LocalRedis

    bdir = ARTIFACTS / version
    if not (bdir / "manifest.json").is_file():
        # Drawn again from synthetic.json (same parameters and seed: the same data as the
        # CSVs, without parsing 7M lines)
        from shared.data.synthetic import Fit, generate

        meta = json.loads((folder / "synthetic.json").read_text())
        syn = generate(Fit.from_json(meta["fit"]), meta["items"], meta["users"], meta["seed"])
        pop = np.bincount(syn.user_items, minlength=len(syn.item_ids))
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / "items.json").write_text(json.dumps(
            [{"item_id": syn.item_ids[r], "title": syn.titles[r],
              "tags": [syn.tag_names[t] for t in syn.item_tags[r]], "popularity": int(pop[r])}
             for r in range(len(syn.item_ids))], ensure_ascii=False))
        off, items = syn.user_offsets.tolist(), (syn.user_items + 1).astype(str).tolist()
        (bdir / "users.json").write_text(json.dumps(
            {str(u + 1): items[off[u]:off[u + 1]] for u in range(len(off) - 1)}))
        (bdir / "manifest.json").write_text(json.dumps(
            {"version": version, "dataset": folder.name, "load_only": True,
             "sizes": {"items": len(syn.item_ids), "users": len(off) - 1}}) + "\n")
        del syn, items
    from bench.serving import bench_env

    redis = LocalRedis(REDIS_PORT + 2).start()
    try:
        env = bench_env(VIDREC_REDIS_URL=redis.url, VIDREC_BUNDLE=version,
                        VIDREC_KEY_PREFIX=KEY_PREFIX, VIDREC_ENVIRONMENT="development",
                        VIDREC_REDIS_CLUSTER="false")
        out = {"bundle": version, "load_at_start": load_avg(),
               **timed_load(env, redis, bdir, limit_s)}
        out["redis"] = redis_facts(redis.url, bdir)
    finally:
        redis.stop()
    out["load_at_end"] = load_avg()
    return out


def loader_cpu(version: str = "scale-1m-load", n_items: int = 100_000,
               n_users: int = 50_000) -> dict:
    """CPU seconds (not wall) the loader's functions and redis-server spend per item and per
    user, on a sample, projected to the bundle's full size: what `vidrec load` costs where it
    gets a core to itself, whatever else the machine runs."""
    import redis as redis_lib

    from scripts.run_local import LocalRedis
    from services.feature_store.keys import Keys
    from services.feature_store.loader import write_items, write_users

    bdir = ARTIFACTS / version
    users = json.loads((bdir / "users.json").read_text())
    total_users = len(users)
    sample = dict(list(users.items())[:n_users])
    del users
    all_items = json.loads((bdir / "items.json").read_text())
    total_items, items = len(all_items), all_items[:n_items]
    del all_items
    tags = {it["item_id"]: it["tags"] for it in items}
    rs = LocalRedis(REDIS_PORT + 3).start()
    try:
        r = redis_lib.Redis.from_url(rs.url)
        keys = Keys(KEY_PREFIX, "vidrec:scale:events")
        c0, w0, s0 = time.process_time(), time.perf_counter(), cpu_seconds(rs.proc.pid)
        write_items(r, keys, items, progress=False)
        c1, w1, s1 = time.process_time(), time.perf_counter(), cpu_seconds(rs.proc.pid)
        write_users(r, keys, sample, tags, 200, progress=False)
        c2, w2, s2 = time.process_time(), time.perf_counter(), cpu_seconds(rs.proc.pid)
        r.close()
    finally:
        rs.stop()
    per_item = (c1 - c0 + s1 - s0) / len(items)
    per_user = (c2 - c1 + s2 - s1) / len(sample)
    return {"items": len(items), "users": len(sample), "load": load_avg(),
            "items_loader_cpu_s": round(c1 - c0, 2), "items_redis_cpu_s": round(s1 - s0, 2),
            "items_wall_s": round(w1 - w0, 2),
            "users_loader_cpu_s": round(c2 - c1, 2), "users_redis_cpu_s": round(s2 - s1, 2),
            "users_wall_s": round(w2 - w1, 2),
            "cpu_us_per_item": round(1e6 * per_item, 1),
            "cpu_us_per_user": round(1e6 * per_user, 1),
            "projected_cpu_s_full_bundle": round(per_item * total_items
                                                 + per_user * total_users, 1),
            "note": "excludes parsing items.json/users.json (seconds at 1M)"}


def retrieval_only(name: str) -> dict:
    """Start the retrieval service alone on a bundle (own redis-server, nothing loaded):
    start-up wall and CPU seconds, resident memory once ready and after 20 requests."""
    import httpx

    from bench.serving import Servers, bench_env
    from scripts.run_local import LocalRedis

    bdir = bundle_path(name)
    log_dir = ARTIFACTS / "scale-logs" / f"retrieval-{name}"
    log_dir.mkdir(parents=True, exist_ok=True)
    redis = LocalRedis(REDIS_PORT + 4).start()
    servers = Servers(log_dir)
    try:
        env = bench_env(VIDREC_REDIS_URL=redis.url, VIDREC_BUNDLE=BUNDLES[name],
                        VIDREC_KEY_PREFIX=KEY_PREFIX, VIDREC_ENVIRONMENT="development")
        out = {"bundle": BUNDLES[name], "load_at_start": load_avg(),
               **timed_start(servers, "retrieval", 18460, env)}
        out.update({f"ready_{k}": v for k, v in proc_memory(out["pid"]).items()})
        users = json.loads((bdir / "users.json").read_text())
        hist = [s for s in list(users.values())[:20] if s]
        del users
        times = []
        with httpx.Client(base_url=out["url"], timeout=120) as client:
            for h in hist:
                t0 = time.perf_counter()
                client.post("/v1/retrieve", json={"queries": [{"history": h[-50:]}]})
                times.append(time.perf_counter() - t0)
        out["retrieve_ms_median_of_20"] = round(1000 * statistics.median(times), 2)
        out.update({f"after_requests_{k}": v for k, v in proc_memory(out["pid"]).items()})
        out["load_at_end"] = load_avg()
        return out
    finally:
        servers.stop()
        redis.stop()


def run_serve(names: list[str], repeats: int, duration: float,
              load_limit_s: float = 420.0) -> dict:
    from bench.serving import Servers, bench_env, run_loadgen, warm_up
    from scripts.run_local import LocalRedis

    path = RESULTS / "scale_serve.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        bdir = bundle_path(name)
        log_dir = ARTIFACTS / "scale-logs" / f"serve-{name}"
        log_dir.mkdir(parents=True, exist_ok=True)
        redis = LocalRedis(REDIS_PORT).start()
        out: dict = {"bundle": BUNDLES[name], "load_at_start": load_avg()}
        try:
            env = bench_env(VIDREC_REDIS_URL=redis.url, VIDREC_BUNDLE=BUNDLES[name],
                            VIDREC_KEY_PREFIX=KEY_PREFIX, VIDREC_ENVIRONMENT="development",
                        VIDREC_REDIS_CLUSTER="false")
            import redis as redis_lib

            before = int(redis_lib.Redis.from_url(redis.url).info("memory")["used_memory"])
            if load_limit_s > 0:
                out.update(timed_load(env, redis, bdir, load_limit_s))
                out["redis"] = redis_facts(redis.url, bdir)
                out["redis"]["used_memory_growth"] = out["redis"]["used_memory"] - before
                out["redis"]["growth_per_user_incl_items"] = round(
                    out["redis"]["used_memory_growth"] / out["redis"]["users"], 1) \
                    if out.get("vidrec_load_finished") else None
            else:  # measured apart (`load-only`): the items and the users the runs ask for
                out["vidrec_load"] = "skipped: measured by `bench.scale load-only`"
                write_sample(redis.url, bdir)
            print(f"[serve] {name}: load {out.get('vidrec_load_s')} s", flush=True)
            # four processes: feature-store, retrieval, ranking, gateway over HTTP
            servers = Servers(log_dir)
            ports = iter(range(18420, 18499))
            try:
                started = {s: timed_start(servers, s, next(ports), env)
                           for s in ("feature-store", "retrieval", "ranking")}
                started["gateway"] = timed_start(servers, "gateway", next(ports), bench_env(
                    VIDREC_REDIS_URL=redis.url, VIDREC_BUNDLE=BUNDLES[name],
                    VIDREC_KEY_PREFIX=KEY_PREFIX, VIDREC_ENVIRONMENT="development",
                    VIDREC_FEATURE_STORE_URL=started["feature-store"]["url"],
                    VIDREC_RETRIEVAL_URL=started["retrieval"]["url"],
                    VIDREC_RANKING_URL=started["ranking"]["url"]))
                users = _users_sample(bdir)
                warm_up(started["gateway"]["url"], users, 50)
                out["four_processes"] = memory_after(servers, started)
            finally:
                servers.stop()
            # one process: capacity, then latency at half of it
            servers = Servers(log_dir)
            try:
                one = timed_start(servers, "all", next(ports), env)
                users = _users_sample(bdir)
                users_file = log_dir / "users.json"
                users_file.write_text(json.dumps(users))
                warm_up(one["url"], users, 100)
                port = int(one["url"].rsplit(":", 1)[1])
                capacity, steps = find_capacity(port, users_file)
                rate = max(5.0, capacity / 2)
                runs = []
                for i in range(repeats):
                    res = run_loadgen(port, users_file, rate, duration)
                    res["load"] = load_avg()
                    runs.append(res)
                    print(f"[serve] {name}: {rate:g} req/s run {i + 1}: p50 {res['p50_ms']} "
                          f"p99 {res['p99_ms']} load {res['load']}", flush=True)
                median = sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]
                out["one_process"] = {
                    "startup_s": one["startup_s"], "startup_cpu_s": one["startup_cpu_s"],
                    **proc_memory(one["pid"]),
                    "capacity_rps": capacity, "capacity_steps": steps,
                    "half_capacity_rps": rate,
                    "at_half_capacity": {k: median[k] for k in (
                        "p50_ms", "p95_ms", "p99_ms", "achieved_rps", "errors", "degraded",
                        "load")},
                    "runs": [{k: r[k] for k in ("p50_ms", "p95_ms", "p99_ms", "achieved_rps",
                                                "errors", "load")} for r in runs]}
            finally:
                servers.stop()
        finally:
            redis.stop()
        out["load_at_end"] = load_avg()
        doc[name] = out
        _write(path, doc)
    return doc


def side_by_side(names: list[str], rate: float, repeats: int, duration: float) -> dict:
    """The one-process service of each bundle at the same open-loop rate, runs interleaved
    (20k, 1m, 20k, 1m, ...) so that the machine's noise falls on both alike: each process has
    its own redis-server holding every item and the 5,000 sampled users (`write_sample`).
    `serve` compares each size at half its own capacity, and the capacity search steps by
    doubling, so one noisy probe moves that rate by a third; this compares like with like."""
    from bench.serving import Servers, bench_env, run_loadgen, warm_up
    from scripts.run_local import LocalRedis

    log_dir = ARTIFACTS / "scale-logs" / "side-by-side"
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = Servers(log_dir)
    redises = []
    targets: dict[str, tuple[int, Path]] = {}
    out: dict = {"rate_rps": rate, "duration_s": duration, "repeats": repeats,
                 "load_at_start": load_avg(), "bundles": {}}
    try:
        for i, name in enumerate(names):
            bdir = bundle_path(name)
            redis = LocalRedis(REDIS_PORT + 10 + i).start()
            redises.append(redis)
            write_sample(redis.url, bdir)
            env = bench_env(VIDREC_REDIS_URL=redis.url, VIDREC_BUNDLE=BUNDLES[name],
                            VIDREC_KEY_PREFIX=KEY_PREFIX, VIDREC_ENVIRONMENT="development",
                            VIDREC_REDIS_CLUSTER="false")
            one = timed_start(servers, "all", 18470 + i, env)
            users = _users_sample(bdir)
            users_file = log_dir / f"users-{name}.json"
            users_file.write_text(json.dumps(users))
            warm_up(one["url"], users, 100)
            targets[name] = (int(one["url"].rsplit(":", 1)[1]), users_file)
            out["bundles"][name] = {"bundle": BUNDLES[name], "startup_s": one["startup_s"],
                                    "runs": []}
        for i in range(repeats):
            for name, (port, users_file) in targets.items():
                res = run_loadgen(port, users_file, rate, duration)
                res["load"] = load_avg()
                out["bundles"][name]["runs"].append(
                    {k: res[k] for k in ("p50_ms", "p95_ms", "p99_ms", "achieved_rps",
                                         "errors", "load")})
                print(f"[side-by-side] {name} run {i + 1}: p50 {res['p50_ms']} p99 "
                      f"{res['p99_ms']} load {res['load']}", flush=True)
    finally:
        servers.stop()
        for redis in redises:
            redis.stop()
    for facts in out["bundles"].values():
        for key in ("p50_ms", "p99_ms"):
            facts[f"median_{key}"] = round(statistics.median(r[key] for r in facts["runs"]), 2)
    first, last = (out["bundles"][n] for n in (names[0], names[-1]))
    out["p99_ratio_last_vs_first"] = round(last["median_p99_ms"] / first["median_p99_ms"], 2)
    out["load_at_end"] = load_avg()
    return out


def _users_sample(bdir: Path, n: int = 5000) -> list[str]:
    users = json.loads((bdir / "users.json").read_text())
    return random.Random(42).sample([u for u, s in users.items() if s], min(n, len(users)))


# ---- build facts and the report -------------------------------------------------------------
def build_facts(name: str) -> dict:
    bdir = bundle_path(name)
    m = json.loads((bdir / "manifest.json").read_text())
    files = {p.name: p.stat().st_size for p in sorted(bdir.iterdir()) if p.is_file()}
    log = ARTIFACTS / "scale-logs" / f"{BUNDLES[name]}.log"
    facts = {"bundle": BUNDLES[name], "sizes": m["sizes"], "step_seconds": m["step_seconds"],
             "build_seconds": m["build_seconds"], "train_users": m.get("train_users"),
             "eval_users": m.get("eval_users"), "index": m["index"],
             "training": {"epochs": _epochs(m["training"]),
                          "windows": _windows(m["training"])},
             "bundle_bytes": sum(files.values()), "files": files}
    if log.is_file():
        text = log.read_text(errors="replace")
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
        facts["peak_rss_bytes"] = int(rss.group(1)) * 1024 if rss else None
        facts["wall"] = wall.group(1) if wall else None
    for when in ("before", "after"):
        p = ARTIFACTS / "scale-logs" / f"{BUNDLES[name]}.load-{when}"
        if p.is_file():
            facts[f"uptime_{when}"] = p.read_text().strip()
    return facts


def _epochs(t: dict) -> dict:
    if "refit" in t:
        return {"validation_run": t["validation_run"]["epochs_run"], "refit": t["refit_epochs"]}
    return {"run": t.get("epochs_run")}


def _windows(t: dict) -> int | None:
    return (t.get("validation_run") or t).get("windows")


def growth(values: dict[str, float], sizes: dict[str, float]) -> dict:
    """Per decade of size: value ratio ^ (1 / decades) between consecutive points, and the
    log-log slope (1 = linear, < 1 sub-linear, > 1 super-linear)."""
    names = [n for n in BUNDLES if n in values and values[n] and n in sizes]
    out = {}
    for a, b in zip(names, names[1:], strict=False):
        decades = np.log10(sizes[b] / sizes[a])
        if decades <= 0:
            continue
        slope = float(np.log10(values[b] / values[a]) / decades)
        out[f"{a}->{b}"] = {"per_decade_x": round(10 ** slope, 2), "loglog_slope": round(slope, 2)}
    return out


def run_report() -> dict:
    builds = {n: build_facts(n) for n in available(None)}
    index = _read(RESULTS / "scale_index.json")
    serve = _read(RESULTS / "scale_serve.json")
    loads = _read(RESULTS / "scale_load.json")
    retrieval = _read(RESULTS / "scale_retrieval.json")
    paired = _read(RESULTS / "scale_side_by_side.json")
    gen = {}
    for name, folder in (("100k", "synth-100k"), ("1m", "synth-1m")):
        p = ARTIFACTS / "synth" / folder / "synthetic.json"
        if p.is_file():
            d = json.loads(p.read_text())
            gen[name] = {k: d[k] for k in ("items", "users", "interactions", "tags",
                                           "draw_seconds", "write_seconds", "bytes")}
    items = {n: b["sizes"]["items"] for n, b in builds.items()}
    users = {n: b["sizes"]["users"] for n, b in builds.items()}
    grow = {"by_items": {}, "by_users": {}}
    series = {
        "build_seconds": {n: b["build_seconds"] for n, b in builds.items()},
        "bundle_bytes": {n: b["bundle_bytes"] for n, b in builds.items()},
    }
    for step in (next(iter(builds.values()))["step_seconds"] if builds else {}):
        series[f"step:{step}"] = {n: b["step_seconds"].get(step) for n, b in builds.items()}
    for svc in ("retrieval", "ranking", "gateway", "feature-store"):
        series[f"rss:{svc}"] = {n: s["four_processes"][svc]["VmRSS"] for n, s in serve.items()
                                if "four_processes" in s}
        series[f"startup:{svc}"] = {n: s["four_processes"][svc]["startup_s"]
                                    for n, s in serve.items() if "four_processes" in s}
    series["p99_half_capacity_ms"] = {n: s["one_process"]["at_half_capacity"]["p99_ms"]
                                      for n, s in serve.items() if "one_process" in s}
    series["capacity_rps"] = {n: s["one_process"]["capacity_rps"] for n, s in serve.items()
                              if "one_process" in s}
    for key, vals in series.items():
        grow["by_items"][key] = growth(vals, items)
    for key in ("vidrec_load_s",):
        grow["by_users"][key] = growth({n: s.get(key) for n, s in serve.items()}, users)
    grow["by_users"]["redis_used_memory"] = growth(
        {n: s["redis"]["used_memory_growth"] for n, s in serve.items() if "redis" in s}, users)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "note": "the load average is stored beside "
                       "each measurement: the first runs (load 12-20) shared the machine with "
                       "other builds and tests, the reruns of 2026-12-03 ran alone (load 0-3)"},
           "generator": gen, "builds": builds, "index": index, "serve": serve,
           "load_only": loads, "retrieval_only": retrieval, "side_by_side": paired,
           "growth": grow, "goals": goals(builds, serve, loads, retrieval, paired)}
    _write(RESULTS / "scale.json", doc)
    plot(doc, RESULTS / "scale.png")
    return doc


def goals(builds: dict, serve: dict, loads: dict | None = None,
          retrieval: dict | None = None, paired: dict | None = None) -> dict:
    big, small = serve.get("1m", {}), serve.get("20k")
    out: dict = {}
    alone = (retrieval or {}).get("1m")
    if alone and "ready_VmRSS" in alone:
        rss = alone["after_requests_VmRSS"]
        out["retrieval_rss_bytes"] = {"value": rss, "goal": 2 * 1024 ** 3,
                                      "met": rss <= 2 * 1024 ** 3, "from": "retrieval-only"}
        out["retrieval_startup"] = {"wall_s": alone["startup_s"],
                                    "cpu_s": alone["startup_cpu_s"], "goal_s": 60,
                                    "met_in_cpu": alone["startup_cpu_s"] <= 60,
                                    "load": alone["load_at_start"]}
    only, cpu = (loads or {}).get("scale-1m-load"), (loads or {}).get("loader_cpu")
    if only and "redis" in only:
        b = only["redis"]["bytes_per_user_mean"]
        out["redis_bytes_per_user"] = {"value": b, "goal": 2048, "met": b <= 2048,
                                       "from": "load-only, 1M users"}
    if cpu:
        out["vidrec_load_cpu_s_projected"] = {
            "value": cpu["projected_cpu_s_full_bundle"], "goal": 300,
            "met": cpu["projected_cpu_s_full_bundle"] <= 300,
            "wall_here": only and {k: only.get(k) for k in (
                "vidrec_load_stopped_after_s", "vidrec_load_users_written",
                "vidrec_load_cpu_s", "load_after_vidrec_load")}}
    if small and "one_process" in big and "one_process" in small:
        ratio = big["one_process"]["at_half_capacity"]["p99_ms"] / \
            small["one_process"]["at_half_capacity"]["p99_ms"]
        out["p99_half_capacity_ratio_1m_vs_20k"] = {
            "value": round(ratio, 2), "goal": 1.5, "met": ratio <= 1.5,
            "rates_rps": {n: serve[n]["one_process"]["half_capacity_rps"] for n in ("20k", "1m")},
            "note": "each size at half its own measured capacity: the capacity search steps by "
                    "doubling, so the two rates can differ by a third (see side_by_side)"}
    for key, run in (paired or {}).items():
        if key.startswith("20k-vs-1m@"):
            out[f"p99_ratio_1m_vs_20k_side_by_side@{run['rate_rps']:g}rps"] = {
                "value": run["p99_ratio_last_vs_first"], "goal": 1.5,
                "met": run["p99_ratio_last_vs_first"] <= 1.5,
                "median_p99_ms": {n: b["median_p99_ms"] for n, b in run["bundles"].items()},
                "runs": run["repeats"]}
    if "four_processes" in big:
        rss = big["four_processes"]["retrieval"]["VmRSS"]
        out["retrieval_rss_bytes"] = {"value": rss, "goal": 2 * 1024 ** 3,
                                      "met": rss <= 2 * 1024 ** 3}
        start = max(v["startup_s"] for v in big["four_processes"].values())
        out["startup_s_slowest_service"] = {"value": start, "goal": 60, "met": start <= 60}
    if "one_process" in big:
        s = big["one_process"]["startup_s"]
        out["startup_s_one_process"] = {"value": s, "goal": 60, "met": s <= 60}
    if "redis" in big:
        b = big["redis"]["bytes_per_user_mean"]
        out["redis_bytes_per_user"] = {"value": b, "goal": 2048, "met": b <= 2048}
    if "vidrec_load_s" in big:
        s = big["vidrec_load_s"]
        out["vidrec_load_s"] = {"value": s, "goal": 300, "met": s <= 300}
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    builds, serve, index = doc["builds"], doc["serve"], doc["index"]
    names = [n for n in BUNDLES if n in builds]
    x = [builds[n]["sizes"]["items"] for n in names]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    ax = axes[0][0]
    steps = list(next(iter(builds.values()))["step_seconds"]) if builds else []
    for s in steps:
        ax.loglog(x, [max(builds[n]["step_seconds"].get(s, 0), 0.01) for n in names], "o-",
                  label=s)
    ax.set(title="build seconds per step", xlabel="items")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    ax.loglog(x, [builds[n]["bundle_bytes"] / 2 ** 20 for n in names], "o-", label="bundle")
    for svc in ("retrieval", "ranking", "gateway", "feature-store"):
        pts = [(builds[n]["sizes"]["items"], serve[n]["four_processes"][svc]["VmRSS"] / 2 ** 20)
               for n in names if n in serve and "four_processes" in serve[n]]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-", label=f"{svc} RSS")
    ax.axhline(2048, color="grey", ls=":", label="2 GB goal")
    ax.set(title="MB", xlabel="items")
    ax.legend(fontsize=7)
    ax = axes[0][2]
    for which, style in (("ann", "-"), ("content", "--")):
        for kind in KINDS[which]:
            pts = [(n_items, e["bytes"] / 2 ** 20) for n_items, e in _index_points(index, which,
                                                                                 kind)]
            if pts:
                ax.loglog(*zip(*pts, strict=True), "o" + style, label=f"{which} {kind}")
    ax.set(title="index MB", xlabel="items")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    for which, style in (("ann", "-"), ("content", "--")):
        for kind in KINDS[which]:
            pts = [(e["query_ms_p50"], e["recall@100"])
                   for _, e in _index_points(index, which, kind)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o" + style, label=f"{which} {kind}")
    ax.set(title="recall@100 vs one-query ms (points: 20k, 100k, 1M)", xscale="log",
           xlabel="ms", ylabel="recall@100")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    pts = [(builds[n]["sizes"]["items"], serve[n]["one_process"]["at_half_capacity"][q])
           for n in names if n in serve and "one_process" in serve[n]
           for q in ("p99_ms",)]
    if pts:
        ax.semilogx(*zip(*pts, strict=True), "o-", label="p99 at half capacity")
        pts50 = [(builds[n]["sizes"]["items"], serve[n]["one_process"]["at_half_capacity"][
            "p50_ms"]) for n in names if n in serve and "one_process" in serve[n]]
        ax.semilogx(*zip(*pts50, strict=True), "o-", label="p50 at half capacity")
    ax.set(title="one-process gateway latency (ms)", xlabel="items")
    ax.legend(fontsize=7)
    ax = axes[1][2]
    pts = [(builds[n]["sizes"]["users"], serve[n]["redis"]["bytes_per_user_mean"])
           for n in names if n in serve and "redis" in serve[n]]
    if pts:
        ax.semilogx(*zip(*pts, strict=True), "o-", label="Redis bytes per user")
    pts = [(builds[n]["sizes"]["users"], serve[n]["vidrec_load_s"])
           for n in names if n in serve and "vidrec_load_s" in serve[n]]
    if pts:
        ax.semilogx(*zip(*pts, strict=True), "s-", label="vidrec load seconds")
    ax.set(title="by users", xlabel="users")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _index_points(index: dict, which: str, kind: str) -> list[tuple[int, dict]]:
    """(items, measurement) for every measured size; synthetic:* entries are content."""
    out = []
    for name, doc in index.items():
        entry = (doc.get(kind) if name.startswith("synthetic:") and which == "content"
                 else doc.get(which, {}).get(kind))
        if entry and "bytes" in entry:
            out.append((int(doc["items"]), entry))
    return sorted(out, key=lambda p: p[0])


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index")
    i.add_argument("--only", nargs="*", choices=list(BUNDLES))
    i.add_argument("--skip", nargs="*", default=[],
                   help="size:which:kind to leave out, e.g. 1m:content:hnsw")
    s = sub.add_parser("serve")
    s.add_argument("--only", nargs="*", choices=list(BUNDLES))
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--duration", type=float, default=10.0)
    s.add_argument("--load-limit", type=float, default=420.0,
                   help="seconds before `vidrec load` is stopped and extrapolated; 0: skip "
                        "it (items and sampled users only)")
    sb = sub.add_parser("side-by-side", help="one-process latency of two sizes at one rate, "
                        "interleaved")
    sb.add_argument("--only", nargs=2, default=["20k", "1m"], choices=list(BUNDLES))
    sb.add_argument("--rate", type=float, required=True)
    sb.add_argument("--repeats", type=int, default=5)
    sb.add_argument("--duration", type=float, default=10.0)
    sub.add_parser("report")
    lo = sub.add_parser("load-only", help="vidrec load of a synthetic dataset, no build")
    lo.add_argument("folder")
    lo.add_argument("--version", default="scale-1m-load")
    lo.add_argument("--load-limit", type=float, default=300.0)
    ro = sub.add_parser("retrieval-only", help="retrieval start-up and memory on a bundle")
    ro.add_argument("name", choices=list(BUNDLES))
    sub.add_parser("loader-cpu", help="CPU per item and per user of the loader (1M sample)")
    c = sub.add_parser("index-synthetic", help="content indexes over a synthetic embeddings.npy")
    c.add_argument("folder")
    c.add_argument("--kinds", nargs="*", default=["ivf_sq8", "ivf_pq"])
    args = p.parse_args(argv)
    if args.cmd == "index":
        run_index(available(args.only), set(args.skip))
    elif args.cmd == "load-only":
        doc = _read(RESULTS / "scale_load.json")
        doc[args.version] = load_only(Path(args.folder), args.version, args.load_limit)
        _write(RESULTS / "scale_load.json", doc)
    elif args.cmd == "retrieval-only":
        doc = _read(RESULTS / "scale_retrieval.json")
        doc[args.name] = retrieval_only(args.name)
        _write(RESULTS / "scale_retrieval.json", doc)
    elif args.cmd == "loader-cpu":
        doc = _read(RESULTS / "scale_load.json")
        doc["loader_cpu"] = loader_cpu()
        _write(RESULTS / "scale_load.json", doc)
    elif args.cmd == "index-synthetic":
        doc = _read(RESULTS / "scale_index.json")
        doc[f"synthetic:{Path(args.folder).name}"] = run_index_synthetic(Path(args.folder),
                                                                          tuple(args.kinds))
        _write(RESULTS / "scale_index.json", doc)
    elif args.cmd == "side-by-side":
        doc = _read(RESULTS / "scale_side_by_side.json")
        doc[f"{args.only[0]}-vs-{args.only[1]}@{args.rate:g}"] = side_by_side(
            args.only, args.rate, args.repeats, args.duration)
        _write(RESULTS / "scale_side_by_side.json", doc)
    elif args.cmd == "serve":
        run_serve(available(args.only), args.repeats, args.duration, args.load_limit)
    else:
        doc = run_report()
        print(json.dumps(doc["goals"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
