"""Read-only access to a built artifact bundle (see docs/bundle.md). No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

PAD_INDEX = 0
UNKNOWN_INDEX = 1
FIRST_ITEM_INDEX = 2  # model index of bundle row 0


J = TypeVar("J", dict[str, Any], list[Any])  # the shapes of a bundle's JSON files


class BundleError(RuntimeError):
    """The bundle is missing or incomplete; the message names the file."""


def resolve_bundle(artifacts_dir: Path, version: str = "latest") -> Path:
    path = Path(version) if Path(version).is_absolute() else Path(artifacts_dir) / version
    if not (path / "manifest.json").is_file():
        raise BundleError(f"{path}: no bundle here (run `vidrec build` first)")
    return path.resolve()


@dataclass
class Bundle:
    path: Path

    @classmethod
    def open(cls, artifacts_dir: Path, version: str = "latest") -> Bundle:
        return cls(resolve_bundle(artifacts_dir, version))

    def file(self, name: str) -> Path:
        p = self.path / name
        if not p.exists():
            raise BundleError(f"{p}: missing from bundle")
        return p

    @property
    def version(self) -> str:
        return self.path.name

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return self._json("manifest.json", dict)

    @cached_property
    def model_info(self) -> dict[str, Any]:
        return self._json("model.json", dict)

    @cached_property
    def items(self) -> list[dict[str, Any]]:
        return self._json("items.json", list)

    @cached_property
    def row_of(self) -> dict[str, int]:
        return {it["item_id"]: r for r, it in enumerate(self.items)}

    def users(self) -> dict[str, list[str]]:
        return self._json("users.json", dict)

    def content_embeddings(self) -> np.ndarray:
        return self._array("content_embeddings.npy")

    def item_vectors(self) -> np.ndarray:
        return self._array("item_vectors.npy")

    def _json(self, name: str, shape: type[J]) -> J:
        """A JSON file of the bundle, checked to be an object (dict) or an array (list)."""
        doc = json.loads(self.file(name).read_text())
        if not isinstance(doc, shape):
            raise BundleError(f"{self.path / name}: expected a JSON "
                              f"{'object' if shape is dict else 'array'}")
        return doc

    def _array(self, name: str) -> np.ndarray:
        return np.asarray(np.load(self.file(name)))

    @property
    def max_history(self) -> int:
        return int(self.model_info["max_history"])


def files_bytes(bundle: Bundle, names: list[str]) -> int:
    """Total size of those of `names` the bundle has (for the per-bundle memory gauge: FAISS
    indexes and ONNX graphs take about their file size in memory)."""
    return sum((bundle.path / n).stat().st_size for n in names if (bundle.path / n).is_file())
