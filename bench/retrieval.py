"""Retrieval latency: `RetrievalService.retrieve_now` (all four sources, union, explanations) on a
real bundle, plus the time of each source and of live upserts.

    .venv/bin/python -m bench.retrieval [--bundle VERSION] [--repeats 200]

Writes bench/results/retrieval.json: median and p90 milliseconds per batch size, with real
users' newest `history_len` items as history, the rest of their sequence as `exclude`, their
five most frequent tags as query tags, and the default caps from settings. The 1-minute load
average is recorded too: on a shared machine it explains most of the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort

from bench.timing import median_p90_ms
from services.retrieval import retrieve as stages
from services.retrieval.service import RetrievalService
from services.retrieval.sources import BY_NAME, SOURCES
from services.retrieval.sources.ann import user_vectors
from shared.contracts import ItemUpsert, RetrievalQuery
from shared.settings import get_settings

OUT = Path(__file__).parent / "results" / "retrieval.json"
BATCHES = [1, 8, 32]


def _timed(fn, repeats: int) -> list[float]:
    for _ in range(5):  # warm-up
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--bundle", default=None)
    args.add_argument("--repeats", type=int, default=200)
    opts = args.parse_args()

    with tempfile.TemporaryDirectory() as state_dir:  # upserts must not touch real state
        settings = get_settings().model_copy(update={"state_dir": Path(state_dir)})
        service = asyncio.run(RetrievalService.open(settings, version=opts.bundle))
        doc = run(service, settings, opts.repeats)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT}")


def run(service: RetrievalService, settings, repeats: int) -> dict:
    state = service.state
    tags_of = {state.item_ids[r]: state.tags[r] for r in range(state.n_bundle)}
    seqs = [s for s in state.bundle.users().values() if len(s) >= settings.history_len]
    rng = np.random.default_rng(0)
    chosen = [seqs[i] for i in rng.choice(len(seqs), max(BATCHES), replace=len(seqs) < 32)]
    queries = []
    for seq in chosen:
        history = seq[-settings.history_len:]
        top = Counter(t for i in history for t in tags_of.get(i, ())).most_common(5)
        queries.append(RetrievalQuery(history=history, exclude=seq[:-settings.history_len],
                                      tags={t: c / top[0][1] for t, c in top} if top else {}))

    results = []
    for b in BATCHES:
        batch = queries[:b]
        row = {"queries": b, **median_p90_ms(_timed(lambda batch=batch: service.retrieve_now(batch),
                                          repeats))}
        out, _ = service.retrieve_now(batch)
        row["candidates_per_query"] = round(float(np.mean([len(r.candidates) for r in out])), 1)
        results.append(row)
        print(row, flush=True)

    # Where one query's time goes.
    one = queries[:1]
    caps = [stages.resolve_caps(q, service.default_caps, 0) for q in one]
    prepared = [stages.prepare(state, one[0], caps[0])]
    found = [f[0] for f in (s.search(state, prepared) for s in SOURCES)]
    parts = {
        "prepare": lambda: stages.prepare(state, one[0], caps[0]),
        "ann (query encoder + search)": lambda: BY_NAME["ann"].search(state, prepared),
        "query_encoder only": lambda: user_vectors(state, [prepared[0].hist_rows]),
        "cooc": lambda: BY_NAME["cooc"].search(state, prepared),
        "content": lambda: BY_NAME["content"].search(state, prepared),
        "tags": lambda: BY_NAME["tags"].search(state, prepared),
        "popular": lambda: BY_NAME["popular"].search(state, prepared),
        "assemble (union, nearest watched, tags, models)":
            lambda: stages.assemble(state, prepared[0], found),
    }
    breakdown = {name: median_p90_ms(_timed(fn, repeats))["median_ms"]
                 for name, fn in parts.items()}
    print(breakdown, flush=True)

    content = state.content.take([0])[0].tolist()
    counter = iter(range(10**6))

    def upsert(embedding):
        item = ItemUpsert(title="A video uploaded a moment ago", tags=["new", "bench"],
                          embedding=embedding)
        asyncio.run(service.upsert_item(f"bench-{next(counter)}", item))

    upserts = {"supplied_embedding": median_p90_ms(_timed(lambda: upsert(content), 30))}
    if state.text_encoder is not None:
        upserts["computed_embedding"] = median_p90_ms(_timed(lambda: upsert(None), 30))
    print(upserts, flush=True)

    return {
        "bundle": state.version, "items": state.n_bundle, "index": state.index_kind,
        "device": state.faiss_device, "history_len": settings.history_len,
        "caps": service.default_caps, "intra_threads": settings.ort_intra_threads,
        "repeats": repeats, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
        "faiss": faiss.__version__, "onnxruntime": ort.__version__,
        "retrieve": results, "one_query_breakdown_median_ms": breakdown,
        "upsert_including_overlay_fsync": upserts,
    }


if __name__ == "__main__":
    main()
