"""metrics.json in its fixed form, plus a markdown table and a PNG bar chart of it."""

from __future__ import annotations

import json
from pathlib import Path

MODEL_ORDER = ["popularity", "content_ann", "item_knn", "ranker_only", "retrieval_only",
               "two_stage"]
COLUMNS = ["HR@10", "NDCG@10", "HR@50"]


def metrics_document(dataset: str, users: int, models: dict[str, dict], recall: float,
                     recall_n: int) -> dict:
    return {"dataset": dataset, "protocol": "leave-one-out, full ranking",
            "users_evaluated": users,
            "models": {m: {c: round(models[m][c], 5) for c in COLUMNS} for m in MODEL_ORDER},
            f"retrieval_recall@{recall_n}": round(recall, 5)}


def write_reports(doc: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "metrics.md").write_text(markdown_table(doc))
    bar_chart(doc, out_dir / "metrics.png")


def markdown_table(doc: dict) -> str:
    recall_key = next(k for k in doc if k.startswith("retrieval_recall@"))
    lines = [f"# {doc['dataset']}: {doc['protocol']}, {doc['users_evaluated']} users", "",
             "| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in doc["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS) + " |")
    lines += ["", f"{recall_key}: {doc[recall_key]:.4f}", ""]
    return "\n".join(lines)


def bar_chart(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["models"])
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.6))
    for ax, col in zip(axes, COLUMNS, strict=True):
        values = [doc["models"][n][col] for n in names]
        ax.bar(names, values, color=["#999"] * 3 + ["#4a7"] * (len(names) - 4) + ["#27a"])
        ax.set_title(col)
        ax.tick_params(axis="x", rotation=45)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{doc['dataset']} ({doc['users_evaluated']} users, {doc['protocol']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
