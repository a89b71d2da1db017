"""Per-row data of the catalogue kept compactly. One Python object per row costs 50-100 bytes
of header before its content, which at 1M items was ~220 MB for titles and tag tuples alone,
plus the heap holes those objects pinned once the parsed items.json was freed (bench/scale.py).

`GrowableRows` holds numeric rows; `TextColumn` one UTF-8 buffer with end offsets; `TagColumn`
int32 codes into one list of distinct names, with end offsets (MicroLens-style data: ~2 tags
per item). All append in amortised O(1): upserts add rows while serving.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from shared.bundle import Bundle
from shared.tags import TagClusters

COPY_BLOCK_ROWS = 65_536


def copy_rows(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:len(src)] = src in blocks of rows: `src` may be a memory map, and a block converted
    to dst's dtype at a time never holds a second full copy."""
    for start in range(0, len(src), COPY_BLOCK_ROWS):
        end = min(start + COPY_BLOCK_ROWS, len(src))
        dst[start:end] = src[start:end]


class GrowableRows:
    """A numpy array that appends rows in amortised O(1); `view` is the filled part."""

    def __init__(self, data: np.ndarray, spare: int = 1024, dtype: DTypeLike | None = None) -> None:
        self._buf = np.zeros((len(data) + spare, *data.shape[1:]), dtype=dtype or data.dtype)
        copy_rows(self._buf, data)
        self.n = len(data)

    @property
    def view(self) -> np.ndarray:
        return self._buf[:self.n]

    def take(self, rows: np.ndarray | list[int]) -> np.ndarray:
        return self._buf[:self.n][np.asarray(rows, dtype=np.int64)]

    def _reserve(self, need: int) -> None:
        """Room for `need` rows, growing by half at least (amortised O(1) appends)."""
        if need > len(self._buf):
            bigger = np.zeros((max(need, len(self._buf) * 3 // 2 + 1), *self._buf.shape[1:]),
                              self._buf.dtype)
            bigger[:self.n] = self._buf[:self.n]
            self._buf = bigger

    def extend(self, rows: np.ndarray) -> None:
        """Append a block of rows."""
        need = self.n + len(rows)
        self._reserve(need)
        self._buf[self.n:need] = rows
        self.n = need

    def append(self, row: ArrayLike) -> int:
        self._reserve(self.n + 1)
        self._buf[self.n] = row
        self.n += 1
        return self.n - 1


class TextColumn:
    """row -> str, stored as UTF-8 bytes end to end (bytearray and array: compact and growable
    without numpy's copy on every resize)."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._data = bytearray()
        self._ends = array("q")
        for text in texts:
            self.append(text)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, row: int) -> str:
        ends = self._ends
        row = range(len(ends))[row]  # negative rows and bounds as a list's
        start = ends[row - 1] if row > 0 else 0
        return self._data[start:ends[row]].decode()

    def __iter__(self) -> Iterator[str]:
        return (self[r] for r in range(len(self)))

    def append(self, text: str) -> int:
        self._data += text.encode()
        self._ends.append(len(self._data))
        return len(self._ends) - 1

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._ends.itemsize * len(self._ends)


# Tuples built for recent rows are kept (rows never change once appended): retrieval reads the
# tags of every candidate of a request that has tags, ~200 rows, which took 0.28 ms decoded each
# time against 0.01 ms from a list of tuples. Cleared whole when full, as CatalogMeta's.
BUILT_TAG_ROWS = 262_144


class TagColumn:
    """row -> tuple of tag names, as codes into `names` (each distinct name stored once)."""

    def __init__(self, rows: Iterable[Iterable[str]] = ()) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}
        self._codes = array("i")
        self._ends = array("q")
        self._built: dict[int, tuple[str, ...]] = {}
        for tags in rows:
            self.append(tags)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, row: int) -> tuple[str, ...]:
        built = self._built.get(row) if row >= 0 else None  # -1 names another row later
        if built is not None:
            return built
        at = range(len(self._ends))[row]  # negative rows and bounds as a list's
        built = self._decode(at)
        if len(self._built) >= BUILT_TAG_ROWS:
            self._built.clear()
        self._built[at] = built
        return built

    def _decode(self, at: int) -> tuple[str, ...]:
        ends = self._ends
        start = ends[at - 1] if at > 0 else 0
        names = self.names
        return tuple([names[c] for c in self._codes[start:ends[at]]])

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        # every row once (offline tools, tests): decoded, not cached
        return (self._decode(r) for r in range(len(self)))

    def append(self, tags: Iterable[str]) -> int:
        for name in tags:
            code = self._code.get(name)
            if code is None:
                code = self._code[name] = len(self.names)
                self.names.append(name)
            self._codes.append(code)
        self._ends.append(len(self._codes))
        return len(self._ends) - 1

    def codes_and_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the codes and end offsets as numpy arrays (a view would pin the buffers,
        and an array exporting its buffer cannot grow)."""
        return np.array(self._codes, dtype=np.int32), np.array(self._ends, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return (self._codes.itemsize * len(self._codes)
                + self._ends.itemsize * len(self._ends))


@dataclass
class ItemColumns:
    """A bundle's items.json as columns, in file order (row r is the r-th item)."""

    item_ids: list[str]
    titles: TextColumn
    tags: TagColumn
    clusters: TagColumn  # the clusters of each row's tags; `tags` itself without tags.json
    popularity: array[float]  # float64 per row

    @classmethod
    def read(cls, bundle: Bundle, tag_clusters: TagClusters) -> ItemColumns:
        """Streamed one item at a time (Bundle.iter_items): never a dict per item for the
        whole catalogue (1M items: a 5.1 GB peak in retrieval, and heap holes after it)."""
        item_ids: list[str] = []
        titles, tags = TextColumn(), TagColumn()
        clusters = TagColumn() if tag_clusters.enabled else tags
        popularity = array("d")
        for it in bundle.iter_items():
            item_ids.append(str(it["item_id"]))
            titles.append(str(it.get("title", "")))
            item_tags = list(it.get("tags", []))
            tags.append(item_tags)
            if clusters is not tags:
                clusters.append(tag_clusters.clusters(item_tags))
            popularity.append(float(it.get("popularity", 0.0)))
        return cls(item_ids, titles, tags, clusters, popularity)
