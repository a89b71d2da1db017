"""Datasets for bench/learning_loop.py, in the custom format (shared/data/custom.py), cut from
a dataset (MicroLens-50k by default) per user, oldest first:

    base/       every interaction except each user's last two   -> bundle A (`vidrec build`)
    scratch/    every interaction except each user's last one    -> the from-scratch bundle
    replay.csv  each user's second-to-last interaction            -> POST /v1/events
    heldout.csv each user's last interaction                      -> the evaluation target

Positions stand in for timestamps (MicroLens has none), so the order is the dataset's order.

    python -m bench.learning_loop_data OUT_DIR [DATASET [SAMPLE_USERS]]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from shared.data import load_dataset
from shared.settings import get_settings


def prepare(out: Path, dataset: str = "microlens-50k", sample_users: int | None = None,
            seed: int = 42) -> dict:
    ds = load_dataset(dataset, get_settings().data_dir)
    if sample_users:
        ds = ds.sample_users(sample_users, seed)
    out.mkdir(parents=True, exist_ok=True)
    users = {u: s for u, s in ds.sequences.items() if len(s) >= 3}
    for name, drop in (("base", 2), ("scratch", 1)):
        folder = out / name
        folder.mkdir(exist_ok=True)
        with (folder / "items.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["item_id", "title", "tags"])
            for it in ds.items:
                w.writerow([it.item_id, it.title, "|".join(it.tags)])
        with (folder / "interactions.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["user_id", "item_id", "timestamp"])
            for u, seq in users.items():
                for pos, item in enumerate(seq[:-drop]):
                    w.writerow([u, item, pos])
    for name, index in (("replay.csv", -2), ("heldout.csv", -1)):
        with (out / name).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["user_id", "item_id", "position"])
            for u, seq in users.items():
                w.writerow([u, seq[index], len(seq) + index])
    return {"users": len(users), "items": len(ds.items),
            "base_interactions": sum(len(s) - 2 for s in users.values())}


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1]), *sys.argv[2:3],
                  *(int(a) for a in sys.argv[3:4])))
