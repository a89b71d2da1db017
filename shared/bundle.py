"""Read-only access to a built artifact bundle (see docs/bundle.md). No torch here."""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


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

    def iter_items(self) -> Iterator[dict[str, Any]]:
        """items.json one item at a time, for catalogues too large to hold as a list of dicts
        (1M items: about 1 GB of dicts, and the holes they leave in the heap once freed).
        The standard decoder parses each element (`raw_decode`); only the walk over the
        top-level array is written here: ijson would do it too, at a few times the CPU."""
        path = self.file("items.json")
        text = path.read_text()
        decoder = json.JSONDecoder()
        pos = _skip_space(text, 0)
        if text[pos:pos + 1] != "[":
            raise BundleError(f"{path}: expected a JSON array")
        pos = _skip_space(text, pos + 1)
        if text[pos:pos + 1] == "]":
            return
        while True:
            try:
                item, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise BundleError(f"{path}: {exc}") from exc
            if not isinstance(item, dict):
                raise BundleError(f"{path}: element at character {pos} is not an object")
            yield item
            pos = _skip_space(text, pos)
            sep = text[pos:pos + 1]
            if sep == "]":
                return
            if sep != ",":
                raise BundleError(f"{path}: expected ',' or ']' at character {pos}")
            pos = _skip_space(text, pos + 1)

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
