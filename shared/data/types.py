"""The in-memory form every dataset loader produces."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


MISSING_FILE = "file not found (set VIDREC_DATA_DIR or run `vidrec data download NAME`)"


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    tags: tuple[str, ...] = ()


@dataclass
class Dataset:
    """Items and per-user interaction sequences, oldest first.

    `sequences[user_id]` lists item ids in time order; `timestamps[user_id]` (same length) holds
    unix seconds where the source has them, else positions 0..n-1.
    """

    name: str
    items: list[Item]
    sequences: dict[str, list[str]]
    timestamps: dict[str, list[float]]
    embeddings: np.ndarray | None = None  # user-supplied item embeddings, rows follow `items`
    source_files: list[Path] = field(default_factory=list)

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())

    def sample_users(self, n: int, seed: int) -> Dataset:
        """A smaller dataset of n random users, keeping only the items they touched."""
        rng = np.random.default_rng(seed)
        users = sorted(self.sequences)
        if n >= len(users):
            return self
        chosen = sorted(rng.choice(len(users), size=n, replace=False))
        keep_users = [users[i] for i in chosen]
        seqs = {u: self.sequences[u] for u in keep_users}
        touched = {i for s in seqs.values() for i in s}
        rows = [k for k, it in enumerate(self.items) if it.item_id in touched]
        emb = self.embeddings[rows] if self.embeddings is not None else None
        return Dataset(
            name=f"{self.name}-sample{n}",
            items=[self.items[k] for k in rows],
            sequences=seqs,
            timestamps={u: self.timestamps[u] for u in keep_users},
            embeddings=emb,
            source_files=self.source_files,
        )


_HASHTAG_SPLIT = re.compile(r"#")
_SPACES = re.compile(r"\s+")


def normalise_tag(tag: str) -> str:
    """Lower-case, trimmed, inner whitespace collapsed: '  Two  Yuan ' -> 'two yuan'."""
    return _SPACES.sub(" ", tag.strip().lower())


def hashtags(title: str) -> tuple[str, ...]:
    """Tags written as '# tag one # tag two' in a MicroLens title (text after each '#')."""
    parts = _HASHTAG_SPLIT.split(title)[1:]
    seen: dict[str, None] = {}
    for part in parts:
        tag = normalise_tag(part)
        if tag:
            seen.setdefault(tag, None)
    return tuple(seen)
