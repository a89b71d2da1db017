"""Helpers for the ranking tests: small real ONNX models with chosen I/O, bundle copies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from shared.settings import Settings

Dim = int | str
INT64, FLOAT = TensorProto.INT64, TensorProto.FLOAT


def ranker_like_onnx(path: Path, e: int, *, rename: dict[str, str] | None = None,
                     dtypes: dict[str, int] | None = None,
                     shapes: dict[str, list[Dim]] | None = None, output: str = "scores",
                     drop_last_candidate: bool = False) -> Path:
    """A real ONNX model with the ranker's I/O, altered as asked: scores = sum(cand_content).

    `drop_last_candidate` makes it return one score too few per user while still declaring
    [B, C] symbolically, the failure only a run can reveal.
    """
    rename, dtypes, shapes = rename or {}, dtypes or {}, shapes or {}
    spec = {"hist_ids": (INT64, ["B", "L"]), "hist_content": (FLOAT, ["B", "L", e]),
            "cand_ids": (INT64, ["B", "C"]), "cand_content": (FLOAT, ["B", "C", e])}
    inputs = [helper.make_tensor_value_info(rename.get(n, n), dtypes.get(n, t), shapes.get(n, s))
              for n, (t, s) in spec.items()]
    content = rename.get("cand_content", "cand_content")
    axes = helper.make_tensor("axes", INT64, [1], [2])
    nodes = [helper.make_node("ReduceSum", [content, "axes"],
                              ["summed" if drop_last_candidate else output], keepdims=0)]
    inits = [axes]
    if drop_last_candidate:
        inits += [helper.make_tensor("start", INT64, [1], [0]),
                  helper.make_tensor("end", INT64, [1], [-1]),
                  helper.make_tensor("axis1", INT64, [1], [1])]
        nodes.append(helper.make_node("Slice", ["summed", "start", "end", "axis1"], [output]))
    out = helper.make_tensor_value_info(output, FLOAT, ["B", "C"])
    graph = helper.make_graph(nodes, "ranker_like", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _copy_bundle(src: Path, artifacts_dir: Path, version: str,
                replace: dict[str, Path] | None = None) -> Path:
    """A new bundle folder whose files link to `src`'s, except those in `replace`."""
    replace = replace or {}
    dst = artifacts_dir / version
    dst.mkdir(parents=True)
    for f in Path(src).iterdir():
        target = replace.get(f.name, f.resolve())
        (dst / f.name).symlink_to(Path(target).resolve())
    return dst


def _make_settings(artifacts_dir: Path, bundle: str, **kw) -> Settings:
    base = dict(artifacts_dir=artifacts_dir, bundle=bundle, use_gpu=False, ort_intra_threads=1,
                ort_inter_threads=1, admin_token="test-admin-token")
    return Settings(**{**base, **kw})


@pytest.fixture
def onnx_model(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def build(e: int, **kw) -> Path:
        return ranker_like_onnx(tmp_path / f"model{next(counter)}.onnx", e, **kw)

    return build


@pytest.fixture
def copy_bundle() -> Callable[..., Path]:
    """copy_bundle(src, artifacts_dir, version, replace={file name: path}) -> new bundle dir."""
    return _copy_bundle


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """make_settings(artifacts_dir, bundle, **overrides): CPU, 1 thread, a known admin token."""
    return _make_settings
