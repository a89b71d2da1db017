"""The synthetic generator's fit against MicroLens-50k, side by side (shared/data/synthetic.py).

    .venv/bin/python -m bench.synthetic fit [--seed 7]
    .venv/bin/python -m bench.synthetic write OUT --items N --users N   # = vidrec data synth

`fit` fits MicroLens-50k, draws a dataset of the same size, and writes the fitted parameters,
summary statistics and KS distances to bench/results/synthetic_fit.json and the four
distributions side by side to bench/results/synthetic_fit.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

from shared.data.synthetic import (
    Fit,
    add_write_args,
    fit_microlens,
    generate,
    observed,
    run_write,
    synthetic_observed,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


# ---- the side-by-side plot -------------------------------------------------------------
def plot(real: dict[str, np.ndarray], drawn: dict[str, np.ndarray], params: Fit,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for data, label, style in ((real, "MicroLens-50k", "-"), (drawn, "synthetic", "--")):
        pop = np.sort(data["popularity"])[::-1]
        axes[0].loglog(np.arange(1, len(pop) + 1), np.maximum(pop, 0.5), style, label=label)
        h = data["history"]
        bins = np.arange(h.min(), min(h.max(), 60) + 2)
        axes[1].hist(h, bins=bins, histtype="step", density=True, label=label, ls=style)
        tpi = data["tags_per_item"]
        axes[2].plot(np.arange(tpi.max() + 1), np.bincount(tpi) / len(tpi), style + "o",
                     label=label, ms=3)
        tf = data["tag_freq"]
        axes[3].loglog(np.arange(1, len(tf) + 1), tf, style, label=label)
    axes[0].set(title=f"item popularity (lognormal s={params.popularity_s:.2f}, "
                      f"scale={params.popularity_scale:.1f})",
                xlabel="item rank", ylabel="interactions")
    axes[1].set(title=f"history length ({params.history_min} + lognormal "
                      f"s={params.history_s:.2f}, scale={params.history_scale:.2f})",
                xlabel="items per user", ylabel="share of users", yscale="log")
    axes[2].set(title=f"tags per item (empirical, mean {params.tags_mu:.2f})",
                xlabel="tags", ylabel="share of items")
    axes[3].set(title=f"tag frequency (Zipf a={params.zipf_a:.2f}; "
                      f"V={params.heaps_k:.1f}*n^{params.heaps_beta:.2f})",
                xlabel="tag rank", ylabel="items")
    for ax in axes:
        ax.legend()
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare(real: dict[str, np.ndarray], drawn: dict[str, np.ndarray]) -> dict:
    """Summary statistics side by side, and two-sample KS distances."""
    out = {}
    for key in ("popularity", "history", "tags_per_item", "title_words"):
        a, b = real[key], drawn[key]
        out[key] = {"real": _summary(a), "synthetic": _summary(b),
                    "ks_distance": round(float(stats.ks_2samp(a, b).statistic), 4)}
    share = lambda f: float(f[:max(1, len(f) // 100)].sum() / f.sum())  # noqa: E731
    out["tag_freq"] = {"real": {"vocab": len(real["tag_freq"]),
                                "top1pct_share": round(share(real["tag_freq"]), 4)},
                       "synthetic": {"vocab": len(drawn["tag_freq"]),
                                     "top1pct_share": round(share(drawn["tag_freq"]), 4)}}
    return out


def _summary(a: np.ndarray) -> dict:
    p = np.percentile(a, [50, 90, 99])
    return {"mean": round(float(a.mean()), 3), "p50": float(p[0]), "p90": float(p[1]),
            "p99": float(p[2]), "max": int(a.max())}


def fit_report(seed: int = 7, data_dir: Path | str | None = None) -> dict:
    """Fit MicroLens-50k, draw a dataset of the same size, compare; write the PNG and JSON."""
    params, ds = fit_microlens(data_dir)
    syn = generate(params, params.items, params.users, seed)
    real, drawn = observed(ds), synthetic_observed(syn)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(real, drawn, params, RESULTS / "synthetic_fit.png")
    doc = {"fit": params.to_json(), "compare_at_real_size": compare(real, drawn),
           "plot": "bench/results/synthetic_fit.png", "seed": seed}
    (RESULTS / "synthetic_fit.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.synthetic", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit MicroLens-50k; write bench/results/synthetic_fit.*")
    f.add_argument("--seed", type=int, default=7)
    w = sub.add_parser("write", help="write a synthetic dataset folder")
    add_write_args(w)
    args = p.parse_args(argv)
    if args.cmd == "fit":
        print(json.dumps(fit_report(args.seed), indent=2))
    else:
        run_write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
