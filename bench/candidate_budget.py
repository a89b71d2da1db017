"""How many candidates the candidate ranker should see: quality against cost per request.

    .venv/bin/python -m bench.candidate_budget [--bundle VERSION] [--users 5000] [--repeats 200]

For each candidate budget (per-source caps, BUDGETS below) on one bundle with a candidate
ranker, side by side in one run:

- quality: `two_stage` and `retrieval_only` NDCG@10 / HR@10 on the same sample of test users,
  by the build's own protocol (offline/ranker_eval.py over the serving retrieval code), with
  the candidate recall (how often the set held the test item) and the mean set size;
- cost: one request's two stages in this process, retrieval (`retrieve_batch` for one query,
  explanations included, as the service answers) and ranking (`OnnxRanker.score_full` with
  the sources, as the ranking service scores), median and p90 over `--repeats` requests of
  real test users; the budgets take turns request by request so the machine's load hits all
  of them alike.

Writes bench/results/candidate_budget.json with the machine's load average beside the numbers.
The serving default (`shared/sources.py` RANKER_CAPS) is chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.timing import median_p90_ms
from offline.evaluate_bundle import bundle_split
from offline.ranker_eval import two_stage_metrics
from offline.two_stage import BundleModels
from services.feature_store.loader import imported_user
from services.gateway.pipeline.retrieve import retrieval_query
from services.ranking.scorer import OnnxRanker
from services.retrieval.retrieve import retrieve_batch
from services.retrieval.sources.ann import user_vectors
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.contracts import sources_only
from shared.settings import get_settings

OUT = Path(__file__).parent / "results" / "candidate_budget.json"
def _budget(**caps: int) -> tuple[str, dict[str, int]]:
    """A budget's row name ("250 (ann 150, cooc 50, ...)": the caps' sum, then each cap) and
    its caps, every source named (sources_only: a source left out is off, not its default)."""
    named = ", ".join(f"{k} {v}" for k, v in caps.items() if v)
    return f"{sum(caps.values())} ({named})", sources_only(**caps)


# The first row is the reference of the ratios. Rows of equal size compare the cooc source with
# more ANN candidates (the other way to raise recall), at the candidate ranker's training budget.
BUDGETS: dict[str, dict[str, int]] = dict([
    _budget(ann=100, cooc=50, tags=15, popular=5),                # the default until 12-04
    _budget(ann=100, cooc=50, content=30, tags=15, popular=5),    # with the content source
    _budget(ann=150, cooc=50, content=30, tags=15, popular=5),
    _budget(ann=150, cooc=100, content=30, tags=15, popular=5),
    _budget(ann=150, content=30, tags=15, popular=5),             # the default before cooc
    _budget(ann=185, content=30, tags=15, popular=5),             # as many, more ANN instead
    _budget(ann=60, cooc=40, content=20, tags=10),
    _budget(ann=60, cooc=40),
    _budget(ann=300, cooc=100, content=100, tags=50, popular=50),  # every source's full cap
    _budget(ann=300, content=100, tags=50, popular=50),
    _budget(ann=60),
    # Below the default until 12-04, for the one-process CPU headroom of issue #14 (200 req/s)
    _budget(ann=100, cooc=50, tags=15),                           # no popular
    _budget(ann=100, cooc=50),                                    # no tags either
    _budget(ann=80, cooc=40, tags=15, popular=5),                 # fewer ANN and cooc
    _budget(ann=80, cooc=40, tags=15),                            # both: the default now
])


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--bundle", default=None)
    args.add_argument("--users", type=int, default=5000, help="test users for quality")
    args.add_argument("--repeats", type=int, default=200, help="requests timed per budget")
    args.add_argument("--only", nargs="*", default=None, help="budget names' leading numbers")
    args.add_argument("--out", type=Path, default=OUT)
    opts = args.parse_args()

    base = get_settings()
    bundle = Bundle.open(base.artifacts_dir, opts.bundle or base.bundle)
    budgets = {name: caps for name, caps in BUDGETS.items()
               if opts.only is None or name.split()[0] in opts.only}
    settings = {name: base.model_copy(update={"candidate_caps": caps, "ranker_caps": caps})
                for name, caps in budgets.items()}
    dataset, split = bundle_split(bundle, base)
    models = BundleModels(bundle, base)
    state = models.state
    ranker = OnnxRanker(bundle, base)
    if ranker.info.kind != "candidate":
        raise SystemExit(f"bundle {bundle.version} has no candidate ranker: nothing to budget")
    rng = np.random.default_rng(0)
    evaluable = split.evaluable("test")
    sample = np.sort(rng.choice(evaluable, min(opts.users, len(evaluable)), replace=False))

    def vectors(hs: list[np.ndarray]) -> np.ndarray:
        return user_vectors(state, [(h - FIRST_ITEM_INDEX)[-state.max_history:] for h in hs])

    quality = {}
    for name, s in settings.items():
        t0 = time.perf_counter()
        staged, recall = two_stage_metrics(bundle, split, s, vectors, models=models, only=sample)
        quality[name] = {**staged, "candidate_recall": recall["union"],
                         "mean_candidates": recall["mean_candidates"],
                         "by_source": recall["by_source"],
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(name, {k: v["NDCG@10"] for k, v in staged.items()}, recall["union"], flush=True)

    # Cost: real test users' requests, each budget in turn per request.
    ids = state.item_ids
    users = rng.choice(sample, opts.repeats)
    timings: dict[str, dict[str, list[float]]] = {n: {"retrieve": [], "rank": [], "both": []}
                                                 for n in budgets}
    for i, u in enumerate(users.tolist()):
        history = [ids[r] for r in (split.history(u, "test") - FIRST_ITEM_INDEX).tolist()]
        user = imported_user("bench", history, models.tags_of, base.history_len)
        for name, caps in budgets.items():
            query = retrieval_query(user, caps)
            t0 = time.perf_counter()
            (result,) = retrieve_batch(state, [query], caps)
            t1 = time.perf_counter()
            cands = [c.item_id for c in result.candidates]
            sources = [(c.source, c.score) for c in result.candidates]
            ranker.score_full([user.history], [cands], sources=[sources])
            t2 = time.perf_counter()
            if i >= 10:  # warm-up
                timings[name]["retrieve"].append(t1 - t0)
                timings[name]["rank"].append(t2 - t1)
                timings[name]["both"].append(t2 - t0)
    cost = {name: {stage: median_p90_ms(t) for stage, t in parts.items()}
            for name, parts in timings.items()}

    reference = next(iter(budgets))
    rows = []
    for name in budgets:
        q, c = quality[name], cost[name]
        rows.append({
            "budget": name, "caps": budgets[name],
            "mean_candidates": q["mean_candidates"], "candidate_recall": q["candidate_recall"],
            "two_stage_ndcg@10": q["two_stage"]["NDCG@10"],
            "two_stage_hr@10": q["two_stage"]["HR@10"],
            "retrieval_only_ndcg@10": q["retrieval_only"]["NDCG@10"],
            "ndcg_vs_first": round(q["two_stage"]["NDCG@10"]
                                   / quality[reference]["two_stage"]["NDCG@10"], 3),
            "retrieve_ms": c["retrieve"], "rank_ms": c["rank"], "both_ms": c["both"],
            "cost_vs_first": round(c["both"]["median_ms"] / cost[reference]["both"]["median_ms"],
                                   3),
        })
        print(rows[-1], flush=True)
    doc = {"bundle": bundle.version, "dataset": dataset, "test_users": len(sample),
           "repeats": opts.repeats, "intra_threads": base.ort_intra_threads,
           "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "machine": platform.processor() or platform.machine(), "results": rows,
           "quality": quality}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    part = opts.out.with_suffix(".json.tmp")
    part.write_text(json.dumps(doc, indent=2) + "\n")
    part.replace(opts.out)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
