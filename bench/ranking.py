"""Ranking latency: `OnnxRanker.score` (packing + features + model run) on a real bundle.

    .venv/bin/python -m bench.ranking [--bundle VERSION] [--repeats 50]

Runs with the onnxruntime threads one serving process gets on this machine
(services/topology.py fit_ort_threads). Writes bench/results/ranking.json: median and p90
milliseconds per (users B, candidates C), with real users' histories and random catalogue items
as candidates (labelled with sources in retrieval's proportions). A bundle with a candidate
ranker is timed against the tower's score (the ranker before it, offline/ranker_fallback.py) in
the same run, the two alternating call by call so that the machine's load hits both alike. The
1-minute load average is recorded too: on a shared machine it explains most of the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.timing import median_p90_ms
from offline.ranker_fallback import write_tower_only_bundle
from services.ranking.batch import pack
from services.ranking.scorer import OnnxRanker
from services.topology import fit_ort_threads
from shared.bundle import Bundle
from shared.ranker_features import SOURCES
from shared.settings import get_settings
from shared.sources import DEFAULT_CAPS

OUT = Path(__file__).parent / "results" / "ranking.json"
SHAPES = [(1, 100), (1, 500), (1, 1000), (8, 100), (8, 500), (8, 1000)]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--bundle", default=None)
    args.add_argument("--repeats", type=int, default=50)
    opts = args.parse_args()

    # The onnxruntime threads `vidrec serve` gives one process on this machine (1 on 2 cores:
    # its event loop needs the other core); VIDREC_ORT_INTRA_THREADS overrides, as there.
    settings = fit_ort_threads(get_settings(), workers=1)
    bundle = Bundle.open(settings.artifacts_dir, opts.bundle or settings.bundle)
    ranker = OnnxRanker(bundle, settings)
    rankers = {ranker.info.kind: ranker}
    tmp = None
    if ranker.info.kind == "candidate":
        tmp = tempfile.TemporaryDirectory()
        tower = write_tower_only_bundle(bundle.path, Path(tmp.name) / bundle.version)
        rankers["tower"] = OnnxRanker(Bundle(tower), settings)
    rng = np.random.default_rng(0)
    item_ids = [it["item_id"] for it in bundle.items]
    users = [seq for seq in bundle.users().values() if seq]
    histories = [users[i][-settings.history_len:] for i in rng.choice(len(users), 8)]

    results = []
    for b, c in SHAPES:
        cands = [[item_ids[i] for i in rng.choice(len(item_ids), c)] for _ in range(b)]
        sources = [_sources(c, rng) for _ in range(b)]
        hists = histories[:b]
        for r in rankers.values():
            for _ in range(5):  # warm-up
                r.score(hists, cands, sources=sources)
        total: dict[str, list[float]] = {kind: [] for kind in rankers}
        packing = []
        for _ in range(opts.repeats):
            for kind, r in rankers.items():
                t0 = time.perf_counter()
                r.score(hists, cands, sources=sources)
                total[kind].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pack(ranker.table, hists, cands, ranker.max_history)
            packing.append(time.perf_counter() - t0)
        row = {"users": b, "candidates": c, **median_p90_ms(total[ranker.info.kind]),
               "pack_median_ms": median_p90_ms(packing)["median_ms"]}
        if "tower" in rankers and ranker.info.kind != "tower":
            row["tower"] = median_p90_ms(total["tower"])
            row["ratio_to_tower"] = round(row["median_ms"] / row["tower"]["median_ms"], 2)
        results.append(row)
        print(row, flush=True)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "bundle": bundle.version, "provider": ranker.info.provider,
        "intra_threads": settings.ort_intra_threads, "inter_threads": settings.ort_inter_threads,
        "ranker": ranker.info.kind, "content_dim": ranker.info.content_dim,
        "model_dim": bundle.model_info.get("dim"),
        "layers": bundle.model_info.get("layers"), "max_history": ranker.max_history,
        "history_len": settings.history_len, "repeats": opts.repeats,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__, "results": results,
    }
    part = OUT.with_suffix(".json.tmp")
    part.write_text(json.dumps(doc, indent=2) + "\n")
    part.replace(OUT)
    print(f"wrote {OUT}")
    if tmp is not None:
        tmp.cleanup()


def _sources(c: int, rng: np.random.Generator) -> list[tuple[str, float]]:
    """Sources in retrieval's default proportions (shared/sources.py DEFAULT_CAPS)."""
    caps = np.array([DEFAULT_CAPS[name] for name in SOURCES], np.float64)
    names = rng.choice(SOURCES, size=c, p=caps / caps.sum())
    return [(str(n), float(s)) for n, s in zip(names, rng.random(c), strict=True)]


if __name__ == "__main__":
    main()
