"""Ranking latency: `OnnxRanker.score` (packing + model run) on a real bundle.

    .venv/bin/python -m bench.ranking [--bundle VERSION] [--repeats 50]

Writes bench/results/ranking.json: median and p90 milliseconds per (users B, candidates C),
with real users' histories and random catalogue items as candidates. The 1-minute load
average is recorded too: on a shared machine it explains most of the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.ranking.batch import pack
from services.ranking.scorer import OnnxRanker
from shared.bundle import Bundle
from shared.settings import get_settings

OUT = Path(__file__).parent / "results" / "ranking.json"
SHAPES = [(1, 100), (1, 500), (1, 1000), (8, 100), (8, 500), (8, 1000)]


def _ms(samples: list[float]) -> dict[str, float]:
    arr = np.array(samples) * 1000
    return {"median_ms": round(float(np.median(arr)), 3),
            "p90_ms": round(float(np.percentile(arr, 90)), 3)}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--bundle", default=None)
    args.add_argument("--repeats", type=int, default=50)
    opts = args.parse_args()

    settings = get_settings()
    bundle = Bundle.open(settings.artifacts_dir, opts.bundle or settings.bundle)
    ranker = OnnxRanker(bundle, settings)
    rng = np.random.default_rng(0)
    item_ids = [it["item_id"] for it in bundle.items]
    users = [seq for seq in bundle.users().values() if seq]
    histories = [users[i][-settings.history_len:] for i in rng.choice(len(users), 8)]

    results = []
    for b, c in SHAPES:
        cands = [[item_ids[i] for i in rng.choice(len(item_ids), c)] for _ in range(b)]
        hists = histories[:b]
        for _ in range(5):  # warm-up
            ranker.score(hists, cands)
        total, packing = [], []
        for _ in range(opts.repeats):
            t0 = time.perf_counter()
            ranker.score(hists, cands)
            total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pack(ranker.table, hists, cands, ranker.max_history)
            packing.append(time.perf_counter() - t0)
        row = {"users": b, "candidates": c, **_ms(total),
               "pack_median_ms": _ms(packing)["median_ms"]}
        results.append(row)
        print(row, flush=True)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "bundle": bundle.version, "provider": ranker.info.provider,
        "intra_threads": settings.ort_intra_threads, "inter_threads": settings.ort_inter_threads,
        "content_dim": ranker.info.content_dim, "model_dim": bundle.model_info.get("dim"),
        "layers": bundle.model_info.get("layers"), "max_history": ranker.max_history,
        "history_len": settings.history_len, "repeats": opts.repeats,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__, "results": results,
    }
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
