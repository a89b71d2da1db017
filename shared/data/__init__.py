"""Dataset loaders: every source becomes one `Dataset` (items + time-ordered interactions)."""

from shared.data.registry import DATASETS, load_dataset
from shared.data.types import Dataset, DatasetError, Item

__all__ = ["DATASETS", "Dataset", "DatasetError", "Item", "load_dataset"]
