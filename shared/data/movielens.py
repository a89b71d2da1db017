"""MovieLens ml-latest-small: ratings become interactions in timestamp order; genres and the
users' free-text tags become each movie's tags."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from shared.data.types import MISSING_FILE, Dataset, DatasetError, Item, normalise_tag

FOLDER = "ml-latest-small"


def load_movielens(data_dir: Path) -> Dataset:
    folder = Path(data_dir) / FOLDER
    movies, ratings, tags = folder / "movies.csv", folder / "ratings.csv", folder / "tags.csv"
    user_tags: dict[str, dict[str, None]] = defaultdict(dict)
    for _, row in _rows(tags, ["userId", "movieId", "tag", "timestamp"]):
        tag = normalise_tag(row[2])
        if tag:
            user_tags[row[1]].setdefault(tag, None)
    items: list[Item] = []
    for _, row in _rows(movies, ["movieId", "title", "genres"]):
        genres = [] if row[2] == "(no genres listed)" else row[2].split("|")
        tag_list = dict.fromkeys(normalise_tag(g) for g in genres if g)
        tag_list.update(user_tags.get(row[0], {}))
        items.append(Item(row[0], row[1], tuple(tag_list)))
    known = {it.item_id for it in items}
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for lineno, row in _rows(ratings, ["userId", "movieId", "rating", "timestamp"]):
        if row[1] not in known:
            raise DatasetError(ratings, f"line {lineno}: movie {row[1]} is not in movies.csv")
        try:
            ts = float(row[3])
            float(row[2])
        except ValueError:
            raise DatasetError(ratings, f"line {lineno}: rating/timestamp not numeric") from None
        events[row[0]].append((ts, lineno, row[1]))
    if not events:
        raise DatasetError(ratings, "no ratings found")
    sequences, timestamps = {}, {}
    for user, evs in events.items():
        evs.sort()  # by timestamp, file order breaking ties
        sequences[user] = [e[2] for e in evs]
        timestamps[user] = [e[0] for e in evs]
    return Dataset("ml-latest-small", items, sequences, timestamps,
                   source_files=[ratings, movies, tags])


def _rows(path: Path, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    if not path.is_file():
        raise DatasetError(path, MISSING_FILE)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        found = next(reader, None)
        if found != header:
            raise DatasetError(path, f"expected header {','.join(header)!r}, found {found!r}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DatasetError(path, f"line {lineno}: expected {len(header)} fields, "
                                         f"found {len(row)}")
            yield lineno, row
