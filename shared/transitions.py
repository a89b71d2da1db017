"""What people watched next: item-to-item transition counts from the training window, shared by
retrieval's `cooc` candidate source and the candidate ranker's `cooc` features.

A bundle holds them in TRANSITIONS_FILE, counted over the sequences it serves (train and
validation, never a test item); the build counts its own for each ranker problem (leak-free:
each problem reads only the sequences its histories come from).

Numpy only (no torch, no faiss), so every process can read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.recency import recency_weights

TRANSITIONS_FILE = "transitions.npz"
COOC_WINDOW = 3   # b counts as following a when it comes at most this many steps later
COOC_ITEMS = 5    # the newest history items whose followers count (features and the source)


@dataclass
class Transitions:
    """Sparse counts (CSR by the earlier item): how often item b came at most COOC_WINDOW
    steps after item a in one user's sequence. Rows are bundle rows; each row's `next` is
    sorted, so a lookup is one binary search per (history item, candidates)."""

    ptr: np.ndarray    # int64 [N + 1]
    next: np.ndarray   # int32: the later items, sorted within each row
    count: np.ndarray  # float32: how often

    @property
    def n_items(self) -> int:
        return len(self.ptr) - 1

    @classmethod
    def from_sequences(cls, sequences: Iterable[np.ndarray], n: int) -> Transitions:
        seqs = [np.asarray(s, np.int64) for s in sequences]
        flat = np.concatenate(seqs) if seqs else np.empty(0, np.int64)
        owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        parts = [np.empty(0, np.int64)]
        for d in range(1, min(COOC_WINDOW, len(flat) - 1) + 1):
            same_user = owner[:-d] == owner[d:]
            parts.append((flat[:-d] * n + flat[d:])[same_user])  # pair (a, b) as one key
        pairs = np.concatenate(parts)
        pairs = pairs[(pairs // n) != (pairs % n)]  # a rewatch is not a transition
        unique, counts = np.unique(pairs, return_counts=True)  # sorted by (a, b)
        first = unique // n
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(first, minlength=n), out=ptr[1:])
        return cls(ptr, (unique % n).astype(np.int32), counts.astype(np.float32))

    def save(self, path: Path) -> None:
        np.savez(path, ptr=self.ptr, next=self.next, count=self.count)

    @classmethod
    def load(cls, path: Path, n: int) -> Transitions:
        """The bundle's file, checked against its catalogue of `n` items (ValueError)."""
        with np.load(path) as z:
            out = cls(z["ptr"], z["next"], z["count"])
        if (out.n_items != n or len(out.next) != len(out.count) or out.ptr[-1] != len(out.next)
                or (len(out.next) and not 0 <= int(out.next.min()) <= int(out.next.max()) < n)):
            raise ValueError(f"{path}: transitions for {out.n_items} items with "
                             f"{len(out.next)} pairs, the bundle has {n} items")
        return out

    def following(self, earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
        """float32 [len(earlier), len(later)]: count of each `later` item after each
        `earlier` one (0 for rows < 0 or past the table on either side: items the bundle
        does not hold follow nothing and are followed by nothing)."""
        out = np.zeros((len(earlier), len(later)), np.float32)
        later = np.asarray(later, np.int64)
        for i, a in enumerate(np.asarray(earlier, np.int64)):
            if not 0 <= a < self.n_items:
                continue
            lo, hi = int(self.ptr[a]), int(self.ptr[a + 1])
            if hi == lo:
                continue
            row = self.next[lo:hi]
            pos = np.minimum(np.searchsorted(row, later), hi - lo - 1)
            out[i] = np.where(row[pos] == later, self.count[lo:hi][pos], 0.0)
        return out

    def out_counts(self, rows: np.ndarray) -> np.ndarray:
        """float32: everything that followed each row (0 for rows the table does not hold)."""
        return np.array([float(self.count[self.ptr[a]:self.ptr[a + 1]].sum())
                         if 0 <= a < self.n_items else 0.0
                         for a in np.asarray(rows, np.int64)], np.float32)

    def after(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores), every item that followed the history's COOC_ITEMS newest items,
        unordered: each one's counts after those items, recency-weighted (the newest weighs
        1). What the `cooc` source proposes from, best score first once sorted."""
        newest = np.asarray(history, np.int64)[-COOC_ITEMS:]
        weights = recency_weights(len(newest))
        rows, scores = [], []
        for a, w in zip(newest.tolist(), weights.tolist(), strict=True):
            if 0 <= a < self.n_items and self.ptr[a + 1] > self.ptr[a]:
                lo, hi = int(self.ptr[a]), int(self.ptr[a + 1])
                rows.append(self.next[lo:hi])
                scores.append(self.count[lo:hi] * np.float32(w))
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        unique, slot = np.unique(np.concatenate(rows), return_inverse=True)
        summed = np.bincount(slot, weights=np.concatenate(scores), minlength=len(unique))
        return unique.astype(np.int64), summed.astype(np.float32)


def best_first(rows: np.ndarray, scores: np.ndarray, cap: int,
               popularity: np.ndarray) -> np.ndarray:
    """Positions of the `cap` best of `after`'s (rows, scores), best first: counts tie often,
    so the more popular item, then the lower row, goes first (the same order offline and in
    the service)."""
    if len(rows) > cap:  # only the cap's best score and its ties can make the cut
        cut = np.partition(-scores, cap - 1)[cap - 1]
        keep = np.flatnonzero(-scores <= cut)
    else:
        keep = np.arange(len(rows))
    order = np.lexsort((rows[keep], -popularity[rows[keep]], -scores[keep]))
    return keep[order[:cap]]
