"""The start-up check against what the scorer feeds, on small real ONNX models."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import pytest
from onnx import TensorProto

from services.ranking.errors import ModelSchemaMismatch, RankerLoadError
from services.ranking.scorer import check_io, check_model_json

E, L = 8, 5


def check(path: Path) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_io(session, content_dim=E, max_history=L)


def test_matching_model_passes(onnx_model: Callable[..., Path]) -> None:
    check(onnx_model(E))
    check(onnx_model(E, shapes={"hist_ids": ["B", L], "hist_content": ["B", L, E]}))


@pytest.mark.parametrize(("kw", "message"), [
    ({"rename": {"cand_ids": "candidate_ids"}},
     r"missing input\(s\) \['cand_ids'\]; unexpected input\(s\) \['candidate_ids'\]"),
    ({"dtypes": {"hist_ids": TensorProto.FLOAT}},
     r"input 'hist_ids' has type tensor\(float\), expected tensor\(int64\)"),
    ({"shapes": {"cand_content": ["B", "C", E + 1]}},
     r"input 'cand_content' axis 2 \(E\) is 9, expected 8"),
    ({"shapes": {"hist_content": ["B", "L", E, 1]}},
     r"input 'hist_content' has rank 4"),
    ({"shapes": {"cand_ids": [1, "C"], "cand_content": [1, "C", E]}},
     r"input 'cand_ids' axis 0 \(B\) is fixed at 1, expected a dynamic axis"),
    ({"shapes": {"hist_ids": ["B", L + 1]}},
     r"input 'hist_ids' axis 1 \(L\) is 6, expected 5"),
    ({"output": "logits"}, r"outputs are \['logits'\], expected \['scores'\]"),
])
def test_mismatch_is_refused_naming_it(onnx_model: Callable[..., Path], kw: dict,
                                       message: str) -> None:
    with pytest.raises(ModelSchemaMismatch, match=message):
        check(onnx_model(E, **kw))


def test_schema_mismatch_is_a_load_error() -> None:
    assert issubclass(ModelSchemaMismatch, RankerLoadError)


MODEL_JSON = {"num_items": 3, "content_dim": E, "dim": 4, "max_history": L, "pad_index": 0,
              "unknown_index": 1, "first_item_index": 2,
              "graphs": {"ranker.onnx": {"inputs": ["hist_ids", "hist_content", "cand_ids",
                                                    "cand_content"], "outputs": ["scores"]}}}


def check_json(info: dict) -> int:
    return check_model_json(info, items=3, content_dim=E, item_dim=4)


def test_model_json_matching_the_bundle_passes() -> None:
    assert check_json(MODEL_JSON) == L
    # with a bias dimension, item vectors are vector_dim = dim + 1 wide
    assert check_json({**MODEL_JSON, "dim": 3, "vector_dim": 4}) == L


@pytest.mark.parametrize(("change", "message"), [
    ({"max_history": None}, "max_history is None"),
    ({"content_dim": E + 1}, "content_dim=9 but content_embeddings.npy has 8"),
    ({"dim": 5}, "dim=5 but item_vectors.npy has 4"),
    ({"dim": 3, "vector_dim": 5}, "vector_dim=5 but item_vectors.npy has 4"),
    ({"num_items": 4}, "num_items=4 but items.json has 3"),
    ({"unknown_index": 0}, "unknown_index=0 but the scorer has 1"),
    ({"graphs": {"ranker.onnx": {"inputs": ["x"], "outputs": ["scores"]}}}, "inputs"),
])
def test_model_json_disagreeing_with_the_bundle_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ModelSchemaMismatch, match=re.escape(message)):
        check_json({**MODEL_JSON, **change})
