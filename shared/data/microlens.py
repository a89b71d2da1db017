"""MicroLens-50k: `MicroLens-50k_pairs.tsv` (user TAB space-separated items, CRLF, in time order)
and `MicroLens-50k_titles.csv` (item,title with '#hashtags')."""

from __future__ import annotations

import csv
from pathlib import Path

from shared.data.types import MISSING_FILE, Dataset, DatasetError, Item, hashtags

FOLDER = "microlens-50k"
PAIRS = "MicroLens-50k_pairs.tsv"
TITLES = "MicroLens-50k_titles.csv"


def load_microlens(data_dir: Path) -> Dataset:
    folder = Path(data_dir) / FOLDER
    pairs_path, titles_path = folder / PAIRS, folder / TITLES
    items = _read_titles(titles_path)
    known = {it.item_id for it in items}
    sequences: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_lines(pairs_path), start=1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        user, sep, rest = line.partition("\t")
        if not sep or not user:
            raise DatasetError(pairs_path, f"line {lineno}: expected 'user<TAB>item item ...'")
        seq = rest.split()
        unknown = [i for i in seq if i not in known]
        if unknown:
            raise DatasetError(pairs_path, f"line {lineno}: item {unknown[0]} has no title")
        if user in sequences:
            raise DatasetError(pairs_path, f"line {lineno}: user {user} appears twice")
        sequences[user] = seq
    if not sequences:
        raise DatasetError(pairs_path, "no interactions found")
    # No timestamps in this file: positions keep the chronological order.
    timestamps = {u: [float(k) for k in range(len(s))] for u, s in sequences.items()}
    return Dataset("microlens-50k", items, sequences, timestamps,
                   source_files=[pairs_path, titles_path])


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(path, MISSING_FILE)
    with path.open(encoding="utf-8", newline="") as fh:
        return fh.read().split("\n")


def _read_titles(path: Path) -> list[Item]:
    if not path.is_file():
        raise DatasetError(path, MISSING_FILE)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["item", "title"]:
            raise DatasetError(path, f"expected header 'item,title', found {header!r}")
        items = []
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise DatasetError(path, f"line {lineno}: expected 2 fields, found {len(row)}")
            item_id, title = row[0].strip(), row[1].strip()
            items.append(Item(item_id, title, hashtags(title)))
    return items
