"""Dataset names -> loaders; anything else is treated as a folder in the custom format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.data.custom import load_custom
from shared.data.microlens import load_microlens
from shared.data.movielens import load_movielens
from shared.data.types import Dataset

DATASETS: dict[str, Callable[[Path], Dataset]] = {
    "microlens-50k": load_microlens,
    "ml-latest-small": load_movielens,
}


def load_dataset(name_or_path: str, data_dir: Path) -> Dataset:
    if name_or_path in DATASETS:
        return DATASETS[name_or_path](Path(data_dir))
    return load_custom(Path(name_or_path))
