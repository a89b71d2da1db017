"""item id -> ItemMeta for a whole bundle, held as columns (shared/columns.py) instead of one
object per item: at 1M items pydantic models took ~1.4 GB of the gateway's 1.6 GB and most of
its 31 s start-up (bench/scale.py). An ItemMeta is built when asked for (the build validated
the bundle's items); items upserted or deleted through this gateway are kept as objects on top
of the columns.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence

import numpy as np

from shared.columns import TagColumn, TextColumn
from shared.contracts import ItemMeta

# Models built for recent lookups are kept: the head stage asks for the same popular items on
# every request, and building one costs ~1.5 us (0.34 ms a request for 200 candidates on this
# machine against 0.05 ms from a dict). Cleared whole when full: bounded, and cheaper per hit
# than an LRU's bookkeeping.
BUILT_CACHE_ITEMS = 50_000


class CatalogMeta(MutableMapping[str, ItemMeta]):
    def __init__(self, row_of: dict[str, int], titles: TextColumn, tags: TagColumn,
                 clusters: TagColumn | None) -> None:
        self._row_of = row_of
        self._titles = titles
        self._tags = tags
        self._clusters = clusters  # None: the bundle has no tag clusters
        self._changed: dict[str, ItemMeta] = {}
        self._built: dict[str, ItemMeta] = {}

    def __getitem__(self, item_id: str) -> ItemMeta:
        meta = self._changed.get(item_id) or self._built.get(item_id)
        if meta is not None:
            return meta
        row = self._row_of[item_id]
        meta = ItemMeta(
            item_id=item_id, title=self._titles[row], tags=list(self._tags[row]),
            available=True,
            clusters=list(self._clusters[row]) if self._clusters is not None else [])
        if len(self._built) >= BUILT_CACHE_ITEMS:
            self._built.clear()
        self._built[item_id] = meta
        return meta

    def tag_keys(self, item_id: str) -> Sequence[str]:
        """ItemMeta.tag_keys (clusters, else tags) without building a model; () for an item
        the catalogue does not know. The head stage asks this of ~100 candidates a request:
        models built for it piled up in the collector's oldest generation, whose full passes
        then stalled requests for 13-18 ms (bench/results/serving_side_by_side_gc.json)."""
        meta = self._changed.get(item_id)
        if meta is not None:
            return meta.tag_keys
        row = self._row_of.get(item_id)
        if row is None:
            return ()
        if self._clusters is not None:
            clusters = self._clusters[row]
            if clusters:
                return clusters
        return self._tags[row]

    def __setitem__(self, item_id: str, meta: ItemMeta) -> None:
        self._changed[item_id] = meta

    def __delitem__(self, item_id: str) -> None:
        raise TypeError("catalog items are never removed: forget() marks them unavailable")

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._changed or item_id in self._row_of

    def __iter__(self) -> Iterator[str]:
        yield from self._row_of
        yield from (i for i in self._changed if i not in self._row_of)

    def __len__(self) -> int:
        return len(self._row_of) + sum(1 for i in self._changed if i not in self._row_of)

    def tag_counts(self) -> dict[str, int]:
        """tag -> available items carrying it (each item once per tag), from the codes: a
        model per item would take seconds at 1M items."""
        codes, ends = self._tags.codes_and_ends()
        rows = np.repeat(np.arange(len(ends), dtype=np.int64), np.diff(ends, prepend=0))
        keep = np.ones(len(ends), dtype=bool)
        for item_id in self._changed:  # counted from their models below
            row = self._row_of.get(item_id)
            if row is not None:
                keep[row] = False
        pairs = np.unique(np.stack([rows, codes.astype(np.int64)])[:, keep[rows]], axis=1)
        per_code = np.bincount(pairs[1], minlength=len(self._tags.names))
        counts = {self._tags.names[c]: int(n) for c, n in enumerate(per_code.tolist()) if n}
        for meta in self._changed.values():
            if meta.available:
                for tag in set(meta.tags):
                    counts[tag] = counts.get(tag, 0) + 1
        return counts
