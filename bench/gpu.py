"""GPU against CPU, measured side by side: FAISS (exact and IVF) over a 1M-item catalogue, and the
ranking service's ONNX ranker with the CUDA execution provider.

    .venv/bin/python -m bench.gpu [--items 1000000] [--bundle artifacts/latest] [--out PATH]

`bench/gpu.sh` installs the `gpu` extra and runs this on a GPU machine. Without a GPU (faiss
sees none, or onnxruntime has no CUDA provider) the CPU halves still run, and the result file
says which GPU parts did not run and why, so the script is checkable anywhere:
`--items 20000` runs the whole thing in seconds.

Vectors are the synthetic generator's (bench/synthetic.py): normalised tag directions plus
noise, 64 dims for the learned-vector index, like the bundle's `index_ann`. Queries are 1,000
catalogue rows with noise. Each timing is the median of `--repeats` runs, and recall@100 is
measured against exact CPU search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np

from shared import ann

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "gpu.json"
DIM = 64
K = 100
QUERIES = 1000


def vectors(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 200), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal(
        (n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, QUERIES)] + 0.1 * rng.standard_normal((QUERIES, dim)).astype(
        np.float32)
    return x, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    hits = sum(len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got, strict=True))
    return round(hits / truth.size, 4)


def faiss_part(n: int, repeats: int) -> dict:
    x, q = vectors(n, DIM)
    out: dict = {"items": n, "dim": DIM, "k": K, "queries": QUERIES, "cpu": {}, "gpu": {}}
    builds = {}
    for kind in ("flat", "ivf_sq8"):
        start = time.perf_counter()
        builds[kind] = ann.build_index(x, kind=kind)
        out["cpu"][kind] = {"build_s": round(time.perf_counter() - start, 2)}
    _, (_, truth) = timed(lambda: builds["flat"].search(q, K), 1)
    for kind, index in builds.items():
        batch_s, (_, got) = timed(lambda index=index: index.search(q, K), repeats)
        one_s, _ = timed(lambda index=index: [index.search(q[i:i + 1], K) for i in range(50)],
                         repeats)
        out["cpu"][kind].update({"batch_ms_per_query": round(1000 * batch_s / QUERIES, 4),
                                 "one_query_ms": round(1000 * one_s / 50, 3),
                                 "recall@100": recall(truth, got)})
    gpus = ann.gpu_count()
    if gpus == 0:
        out["gpu"] = {"ran": False, "why": "faiss sees no GPU (faiss-cpu installed, or no "
                                           "CUDA device)"}
        return out
    res = faiss.StandardGpuResources()
    for kind, index in builds.items():
        start = time.perf_counter()
        gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
        moved = time.perf_counter() - start
        batch_s, (_, got) = timed(lambda g=gpu_index: g.search(q, K), repeats)
        one_s, _ = timed(lambda g=gpu_index: [g.search(q[i:i + 1], K) for i in range(50)],
                         repeats)
        out["gpu"][kind] = {"to_gpu_s": round(moved, 2),
                            "batch_ms_per_query": round(1000 * batch_s / QUERIES, 4),
                            "one_query_ms": round(1000 * one_s / 50, 3),
                            "recall@100": recall(truth, got)}
    out["gpu"]["ran"] = True
    out["gpu"]["devices"] = gpus
    return out


def ranking_part(bundle: Path, repeats: int) -> dict:
    import onnxruntime as ort

    model = bundle / "ranker.onnx"
    if not model.is_file():
        return {"ran": False, "why": f"{model} not found: build a bundle first (vidrec build)"}
    info = json.loads((bundle / "model.json").read_text())
    content_dim, hist = int(info["content_dim"]), min(int(info["max_history"]), 50)
    n_items = int(info["num_items"])
    rng = np.random.default_rng(0)
    out: dict = {"bundle": bundle.resolve().name, "providers_available":
                 ort.get_available_providers()}
    providers = {"cpu": ["CPUExecutionProvider"]}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers["cuda"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        out["cuda"] = {"ran": False, "why": "onnxruntime has no CUDAExecutionProvider "
                                            "(onnxruntime-gpu not installed, or no GPU)"}
    for name, prov in providers.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        sess = ort.InferenceSession(str(model), opts, providers=prov)
        res = {"provider": sess.get_providers()[0]}
        for users, cands in ((1, 500), (8, 500), (64, 1000)):
            feeds = {"hist_ids": rng.integers(2, n_items + 2, (users, hist)),
                     "hist_content": rng.standard_normal((users, hist, content_dim)
                                                         ).astype(np.float32),
                     "cand_ids": rng.integers(2, n_items + 2, (users, cands)),
                     "cand_content": rng.standard_normal((users, cands, content_dim)
                                                         ).astype(np.float32)}
            sess.run(None, feeds)  # warm-up (CUDA: kernels, memory arena)
            s, _ = timed(lambda f=feeds, r=sess.run: r(None, f), repeats)
            res[f"{users}x{cands}_ms"] = round(1000 * s, 3)
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bundle", default=str(REPO / "artifacts" / "latest"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--note", default=None, help="a line stored as `note` in the result")
    args = p.parse_args(argv)
    doc = {"note": args.note, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "load": os.getloadavg(), "nvidia_smi": _nvidia_smi()},
           "libraries": {lib: _version(lib) for lib in ("faiss-cpu", "faiss-gpu",
                                                         "onnxruntime", "onnxruntime-gpu")},
           "faiss": faiss_part(args.items, args.repeats),
           "ranking": ranking_part(Path(args.bundle), args.repeats)}
    cuda = doc["ranking"].get("cuda", {})
    doc["gpu_ran"] = {"faiss": bool(doc["faiss"]["gpu"].get("ran")),
                      "onnxruntime_cuda": cuda.get("provider") == "CUDAExecutionProvider"}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "not installed"


def _nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
