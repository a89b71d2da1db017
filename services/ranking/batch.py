"""Turn item-id lists into the ranker's input arrays (docs/bundle.md, "Model inputs").

Model index of bundle row r is r + 2; 0 is padding, 1 is an item the model was not trained on
(only its content counts). Content rows come from one table with an extra all-zero row at the
end, so padding and items without any content are a single numpy gather, never a Python loop
per candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import repeat

import numpy as np

from shared.bundle import FIRST_ITEM_INDEX, PAD_INDEX, UNKNOWN_INDEX
from shared.columns import copy_rows
from shared.onnx_graphs import RANKER

MISSING = -1  # row of an item id the bundle does not hold


@dataclass(frozen=True)
class ModelInputs:
    """ranker.onnx's inputs: one field per input of its spec (shared/onnx_graphs.py, RANKER),
    named alike; `feeds` checks names, dtypes and ranks against it."""

    hist_ids: np.ndarray  # int64 [B, L]
    hist_content: np.ndarray  # float32 [B, L, E]
    cand_ids: np.ndarray  # int64 [B, C]
    cand_content: np.ndarray  # float32 [B, C, E]

    def feeds(self) -> dict[str, np.ndarray]:
        return RANKER.feeds({f.name: getattr(self, f.name) for f in fields(self)})


class ItemTable:
    """Bundle rows and content embeddings, plus one zero row used for padding."""

    def __init__(self, item_ids: Sequence[str], content: np.ndarray) -> None:
        if content.ndim != 2 or content.shape[0] != len(item_ids):
            raise ValueError(f"content embeddings have shape {content.shape}, "
                             f"expected [{len(item_ids)}, E] (one row per item)")
        self.item_ids = list(item_ids)
        self.row_of: dict[str, int] = {item_id: r for r, item_id in enumerate(item_ids)}
        n, dim = content.shape
        self.content = np.zeros((n + 1, dim), dtype=np.float32)
        copy_rows(self.content, content)  # `content` may be a memory map
        self.zero_row = int(n)

    @property
    def dim(self) -> int:
        return int(self.content.shape[1])

    def __len__(self) -> int:
        return self.zero_row

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Bundle row per id, MISSING where the bundle does not hold it (a C-level loop)."""
        return np.fromiter(map(self.row_of.get, item_ids, repeat(MISSING)),
                           dtype=np.int64, count=len(item_ids))

    def unknown(self, item_ids: Sequence[str]) -> list[str]:
        row_of = self.row_of
        return [i for i in item_ids if i not in row_of]


def pack(table: ItemTable, histories: Sequence[Sequence[str]],
         candidates: Sequence[Sequence[str]], max_history: int,
         new_content: Mapping[str, np.ndarray] | None = None,
         history_width: int | None = None) -> ModelInputs:
    """Inputs for len(histories) users; candidate lists are right-padded to the longest.

    Histories keep their newest `max_history` usable items and are left-padded to the longest
    in the batch (to max_history when the batch holds an empty history), or to
    `history_width` for a model exported with a fixed history axis. A history item neither in
    the bundle nor in `new_content` carries no information (index 1, zero content) and is
    dropped; a candidate like that is kept and scored on the model's "unknown item" embedding
    alone.
    """
    if len(histories) != len(candidates):
        raise ValueError(f"{len(histories)} histories for {len(candidates)} candidate lists")
    new_content = new_content or {}
    hist_ids, hist_content = _pack_histories(table, histories, max_history, new_content,
                                             history_width)
    cand_ids, cand_content = _pack_candidates(table, candidates, new_content)
    return ModelInputs(hist_ids, hist_content, cand_ids, cand_content)


def _pack_histories(table: ItemTable, histories: Sequence[Sequence[str]], max_history: int,
                    new_content: Mapping[str, np.ndarray],
                    width: int | None) -> tuple[np.ndarray, np.ndarray]:
    # Per user, newest first: (model index, content row or a vector for a new item).
    kept: list[list[tuple[int, int | np.ndarray]]] = []
    for history in histories:
        items: list[tuple[int, int | np.ndarray]] = []
        rows = table.rows(history).tolist()
        for item_id, row in zip(reversed(history), reversed(rows), strict=True):
            if len(items) == max_history:
                break
            if row != MISSING:
                items.append((row + FIRST_ITEM_INDEX, row))
            elif item_id in new_content:
                items.append((UNKNOWN_INDEX, new_content[item_id]))
        kept.append(items)
    # Positions count back from the newest item and padding is masked, so padding to the
    # batch's longest history gives the same scores as padding to max_history, for less work.
    # Not so for an all-padding history: with every key masked, attention spreads evenly over
    # the padding positions and the result depends on their number. Such a batch is padded to
    # max_history, so an empty history scores the same alone or in any batch.
    longest = max(map(len, kept), default=0)
    length = width or (max_history if not all(kept) else max(1, longest))
    ids = np.full((len(histories), length), PAD_INDEX, dtype=np.int64)
    gather = np.full((len(histories), length), table.zero_row, dtype=np.int64)
    extra: list[tuple[int, int, np.ndarray]] = []
    for u, items in enumerate(kept):
        for back, (index, content) in enumerate(items, start=1):
            ids[u, length - back] = index
            if isinstance(content, int):
                gather[u, length - back] = content
            else:
                extra.append((u, length - back, content))
    hist_content = table.content[gather]
    for u, pos, vec in extra:
        hist_content[u, pos] = vec
    return ids, hist_content


def _pack_candidates(table: ItemTable, candidates: Sequence[Sequence[str]],
                     new_content: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
    width = max(int(lengths.max(initial=0)), 1)
    flat = [item_id for cands in candidates for item_id in cands]
    rows = table.rows(flat)
    missing = rows == MISSING
    any_missing = bool(missing.any())

    flat_ids = rows + FIRST_ITEM_INDEX
    if any_missing:
        flat_ids[missing] = UNKNOWN_INDEX
        rows[missing] = table.zero_row  # `rows` becomes the content gather index
    filled = None
    if (lengths == width).all():  # no padding (one user, or equal lists): just reshape
        ids = flat_ids.reshape(len(candidates), width)
        gather = rows.reshape(len(candidates), width)
    else:
        filled = np.arange(width) < lengths[:, None]  # row-major order == order of `flat`
        ids = np.full((len(candidates), width), PAD_INDEX, dtype=np.int64)
        gather = np.full((len(candidates), width), table.zero_row, dtype=np.int64)
        ids[filled] = flat_ids
        gather[filled] = rows
    content = table.content[gather]

    if new_content and any_missing:
        at = np.flatnonzero(missing)
        have = [(i, new_content[flat[i]]) for i in at.tolist() if flat[i] in new_content]
        if have:
            where = np.array([i for i, _ in have], dtype=np.int64)
            if filled is None:
                users, slots = np.divmod(where, width)
            else:
                users, slots = (a[where] for a in np.nonzero(filled))
            content[users, slots] = np.stack([v for _, v in have])
    return ids, content


def plan_batches(lengths: Sequence[int], max_cells: int) -> list[list[int]]:
    """Group users (by index) into batches whose padded size B x C stays under `max_cells`.

    Users are grouped longest list first so that padding stays small; users with no
    candidates are left out (they get an empty score list without running the model).
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_cells:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
