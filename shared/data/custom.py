"""A user's own data, in a folder:

- `interactions.csv`: header `user_id,item_id,timestamp` (unix seconds or ISO 8601), any order.
- `items.csv`: header `item_id,title,tags`; tags separated by `|` (may be empty).
- optional `embeddings.npy` (float32, one row per line of items.csv, same order) or
  `embeddings.parquet` with columns `item_id` and `embedding` (list of floats; needs pyarrow).
  When present these are used instead of the text encoder.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from shared.data.types import Dataset, DatasetError, Item, normalise_tag


def parse_timestamp(value: str) -> float:
    """Unix seconds or ISO 8601 -> unix seconds; ValueError otherwise."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def load_custom(folder: Path) -> Dataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(folder, "dataset folder not found")
    items_path, inter_path = folder / "items.csv", folder / "interactions.csv"
    items = [Item(row["item_id"], row["title"], _tags(row["tags"]))
             for _, row in _dict_rows(items_path, ["item_id", "title", "tags"])]
    known = {it.item_id for it in items}
    if len(known) != len(items):
        raise DatasetError(items_path, "item_id values are not unique")
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for lineno, row in _dict_rows(inter_path, ["user_id", "item_id", "timestamp"]):
        if row["item_id"] not in known:
            raise DatasetError(inter_path,
                               f"line {lineno}: item {row['item_id']!r} not in items.csv")
        try:
            ts = parse_timestamp(row["timestamp"])
        except ValueError:
            raise DatasetError(inter_path, f"line {lineno}: timestamp {row['timestamp']!r} is "
                                           "neither unix seconds nor ISO 8601") from None
        events[row["user_id"]].append((ts, lineno, row["item_id"]))
    if not events:
        raise DatasetError(inter_path, "no interactions found")
    sequences = {u: [e[2] for e in sorted(evs)] for u, evs in events.items()}
    timestamps = {u: [e[0] for e in sorted(evs)] for u, evs in events.items()}
    embeddings = _load_embeddings(folder, items)
    return Dataset(folder.name, items, sequences, timestamps, embeddings,
                   source_files=[inter_path, items_path])


def _tags(field: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for t in (normalise_tag(x) for x in field.split("|")) if t))


def _dict_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(path, f"missing column(s) {', '.join(missing)}; "
                                     f"header must include {','.join(required)}")
        for lineno, row in enumerate(reader, start=2):
            if any(row.get(c) is None for c in required):
                raise DatasetError(path, f"line {lineno}: too few fields")
            yield lineno, {c: row[c].strip() for c in required}


def _load_embeddings(folder: Path, items: list[Item]) -> np.ndarray | None:
    npy, parquet = folder / "embeddings.npy", folder / "embeddings.parquet"
    if npy.is_file():
        emb = np.load(npy)
        if emb.ndim != 2 or emb.shape[0] != len(items):
            raise DatasetError(npy, f"expected shape ({len(items)}, dim), found {emb.shape}")
        return _finite(npy, emb.astype(np.float32))
    if parquet.is_file():
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(parquet, "reading parquet needs `pip install pyarrow`") from None
        table = pq.read_table(parquet, columns=["item_id", "embedding"]).to_pydict()
        by_id = {str(i): e for i, e in zip(table["item_id"], table["embedding"], strict=True)}
        missing = [it.item_id for it in items if it.item_id not in by_id]
        if missing:
            raise DatasetError(parquet, f"no embedding for item {missing[0]!r}")
        emb = np.asarray([by_id[it.item_id] for it in items], dtype=np.float32)
        return _finite(parquet, emb)
    return None


def _finite(path: Path, emb: np.ndarray) -> np.ndarray:
    if not np.isfinite(emb).all():
        raise DatasetError(path, "embeddings contain NaN or infinite values")
    return emb
